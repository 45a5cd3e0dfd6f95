// NewMoedChannel: insecure credentials and a short reconnect backoff.
#include "common/moed_channel.h"

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace moe {

std::shared_ptr<grpc::Channel> NewMoedChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC takes it as the time a connection attempt may
  // last (default 20 s). At 100 ms, a moed that answered its TCP handshake and HTTP/2 settings
  // a little late (a loaded machine, a far network) failed every call as UNAVAILABLE.
  // Its own connection, not one from the process-wide pool that channels with the same address
  // and arguments share: a new channel then starts without an old one's connect backoff.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace moe
