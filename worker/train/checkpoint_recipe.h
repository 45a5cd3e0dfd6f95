// Which recipe (MODEL.md "Options: the seeds' recipes") made a checkpoint, against the job that
// resumes it: a checkpoint continues only under the options that made it, since they change the
// model's function (activation, router scoring, balancing bias) or its training (dropouts,
// optimizer) in ways the weights alone do not show.
#pragma once

#include <string>

#include "moe/v1/job.pb.h"

namespace moe {

// "" when the two specs run the same recipe; otherwise one line per option that differs,
// "<key>: <saved> in the checkpoint, <job> in this job", for the caller's message.
std::string RecipeDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job);

// The same for the model's shape (d_model, layers, heads, kv heads, vocabulary, tied embeddings,
// experts, top_k, expert_hidden): named by key before the tensors are compared, since some
// changes leave every tensor's shape alone (4 heads of 8 as 2 of 16, top_k). Each vocab is the
// one in force (the checkpoint's meta, the job's tokenizer), for specs that leave vocab_size 0.
std::string ModelShapeDifference(const moe::v1::JobSpec& saved, int saved_vocab, const moe::v1::JobSpec& job,
                                 int job_vocab);

}  // namespace moe
