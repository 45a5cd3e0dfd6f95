// JobStore::Upgrade: the columns that stores written by an older moed lack, added in place when
// moed opens them (tables an older store lacks come from the schema's CREATE TABLE IF NOT EXISTS).
#include "absl/strings/str_cat.h"
#include "daemon/job_store.h"
#include "daemon/sqlite_util.h"

namespace moe::daemon {

absl::Status JobStore::Upgrade() {
  struct Column {
    const char* table;
    const char* name;
    const char* add;
  };
  // The launch's report secret, and the paths a deleted job left on disk.
  for (const Column& c :
       {Column{"jobs", "report_secret", "ALTER TABLE jobs ADD COLUMN report_secret TEXT NOT NULL DEFAULT '';"},
        Column{"deleted_jobs", "kept", "ALTER TABLE deleted_jobs ADD COLUMN kept TEXT NOT NULL DEFAULT '';"}}) {
    bool has = false;
    {
      Stmt q(db_, absl::StrCat("SELECT 1 FROM pragma_table_info('", c.table, "') WHERE name = '", c.name, "'").c_str());
      has = q.Step() == SQLITE_ROW;
    }
    if (has) continue;
    if (absl::Status s = Exec(c.add); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace moe::daemon
