// Nemotron-H MLP: down(relu(up(x))^2), no gate.
#include "src/model/layers.h"

namespace mp::model {

at::Tensor mlp_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h) {
  at::Tensor a = at::relu(at::linear(h, p.get("up_proj.weight"), p.optional("up_proj.bias")));
  a = a * a;
  if (ctx.mask && ctx.mask->mlp_neurons.defined()) a = a * ctx.mask->mlp_neurons.to(a.scalar_type());
  ctx.tap(Tap::MlpAct, a);
  return at::linear(a, p.get("down_proj.weight"), p.optional("down_proj.bias"));
}

}  // namespace mp::model
