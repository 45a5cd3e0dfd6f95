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

}  // namespace moe
