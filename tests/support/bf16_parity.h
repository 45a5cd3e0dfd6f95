// How the GPU's bf16 model is compared with the CPU's fp32 model (cuda_model_test,
// cuda_expert_recipes_test). bf16 rounding moves a router score by about 1e-3 of itself: a
// near-tie of two experts' scores may then flip, and that token trains another expert. Such
// flips are counted per layer (from the per-expert assignment counts, which undercount a swap)
// and must stay rare; the layer where one happened has its MoE gradients compared loosely.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "worker/model/train_model.h"

namespace moe::testing {

// Per layer: assignments the GPU sent to other experts than the CPU did (a lower bound).
inline std::vector<int64_t> RoutingMoves(const ForwardResult& cpu, const ForwardResult& gpu) {
  std::vector<int64_t> moves(cpu.layers.size(), 0);
  for (size_t l = 0; l < cpu.layers.size() && l < gpu.layers.size(); ++l) {
    const auto& a = cpu.layers[l].routed;
    const auto& b = gpu.layers[l].routed;
    for (size_t e = 0; e < a.size() && e < b.size(); ++e) moves[l] += std::abs(a[e] - b[e]);
    moves[l] /= 2;  // each moved assignment leaves one expert and joins another
    if (moves[l] > 0) std::printf("  layer %zu: %lld assignments moved under bf16\n", l, static_cast<long long>(moves[l]));
  }
  return moves;
}

// At most 2% of a layer's assignments (and at least 2 allowed) may move under bf16.
inline int64_t AllowedMoves(const MoeLayerForwardStats& layer) { return std::max<int64_t>(2, layer.assignments / 50); }

// The relative-error bound of a parameter's gradient, bf16 GPU against fp32 CPU: 5e-2; 0.3 for
// the router (a difference of near-equal terms through the renormalised top-k weights, which
// magnifies the experts' bf16 rounding) and for the MoE weights of a layer where routing moved;
// 0.1 below such a layer (the moved token's gradient flows back through every layer under it,
// and into the embeddings; the weights above it do not see the move).
inline double Bf16GradBound(const std::string& name, const std::vector<int64_t>& moves) {
  if (name.find("router") != std::string::npos) return 0.3;
  int highest_moved = -1;
  for (size_t l = 0; l < moves.size(); ++l) {
    if (moves[l] > 0) highest_moved = static_cast<int>(l);
  }
  int layer = -1, end = 0;  // end: set only when ".moe" follows the layer number
  if (std::sscanf(name.c_str(), "blocks.%d.moe%n", &layer, &end) == 1 && end > 0 && layer >= 0 &&
      layer < static_cast<int>(moves.size()) && moves[layer] > 0) {
    return 0.3;
  }
  if (highest_moved >= 0) {
    if (std::sscanf(name.c_str(), "blocks.%d.", &layer) == 1) {
      if (layer <= highest_moved) return 0.1;
    } else if (name.rfind("wte", 0) == 0) {
      return 0.1;
    }
  }
  return 5e-2;
}

}  // namespace moe::testing
