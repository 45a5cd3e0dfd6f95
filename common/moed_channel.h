// The gRPC channel moectl and the workers' reporters open to moed: it reconnects within about a
// second when moed comes back (gRPC's default backoff grows from 1 s to 120 s), and gives a
// connection gRPC's usual 20 s to come up, so a busy or distant moed is not "unreachable".
#pragma once

#include <memory>
#include <string>

#include "grpcpp/channel.h"

namespace moe {

std::shared_ptr<grpc::Channel> NewMoedChannel(const std::string& address);

}  // namespace moe
