// A checkpoint's settings against the job that resumes it. Refused when they differ: the
// recipe (MODEL.md "Options: the seeds' recipes"), which changes the model's function
// (activation, router scoring, balancing bias) or its optimizer in ways the weights alone do not
// show; the model's shape; the sequence length. Allowed and reported: the training knobs a user
// turns between runs (every dropout rate, capacity, loss coefficients, the optimizer's
// hyperparameters and schedule, the sampler's seed and batch, precision and state storage).
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

// The same for model.seq_len: it fixes the batches every step samples (each sequence starts at
// a draw modulo tokens - seq_len) and the context the model is trained for, so a resume with
// another one would not continue the run that made the checkpoint, though every tensor fits.
std::string DataStreamDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job);

// The settings a resume may change, for its log line: "" when none differs; otherwise
// "<key> <saved> -> <job>" per setting, joined by ", " (model.dropout, attention.dropout,
// moe.expert_dropout, capacity_factor, aux_loss_coef, z_loss_coef, train.steps, lr, min_lr,
// warmup_steps, schedule, decay_fraction, weight_decay, beta1, beta2, grad_clip, muon_lr, seed,
// batch_size, grad_accum, precision, master_weights, optimizer_state, recompute), each read with
// its default applied.
std::string ResumeChanges(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job);

}  // namespace moe
