// Measurement aid for benchmarks/bench_autograd_layer.py; not part of the mclcore extension (setup.py builds
// csrc/ only) and never loaded by the library.
//
// mclcore registers the autograd formulas of its ops in Python with torch.library.register_autograd (issue #2,
// item 3), so every training call of mclcore::infonce_with_grad and mclcore::critic_grad passes through a Python
// autograd.Function in the forward and a Python backward. To measure what that layer costs, this file writes the
// same two formulas as C++ torch::autograd::Functions and, while enable() holds, registers them for AutogradCPU:
// that key is more specific than the Autograd alias register_autograd uses, so CPU calls route here and nothing else
// changes (the kernels, the public Python functions, mcl_loss). disable() drops the registration again, so a
// benchmark can alternate the two routes in one process.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using at::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::TypedOperatorHandle<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                   const std::optional<Tensor>&, double, double)>&
infonce_with_grad_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mclcore::infonce_with_grad", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                        const std::optional<Tensor>&, double, double)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(const Tensor&, TensorList, TensorList, c10::string_view)>&
critic_grad_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mclcore::critic_grad", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, TensorList, TensorList, c10::string_view)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>>(
    const Tensor&, const Tensor&, TensorList, TensorList, const Tensor&, c10::string_view)>&
critic_grad_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mclcore::critic_grad_backward", "")
                             .typed<std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>>(
                                 const Tensor&, const Tensor&, TensorList, TensorList, const Tensor&,
                                 c10::string_view)>();
  return op;
}

// The formula of mclcore/ops/infonce.py (_setup_context_with_grad, _backward_with_grad): the forward computes the
// gradients for an upstream gradient of 1, the backward scales them.
struct InfonceWithGrad : public torch::autograd::Function<InfonceWithGrad> {
  static variable_list forward(AutogradContext* ctx, const Tensor& p, const Tensor& k,
                               const std::optional<Tensor>& groups, double tau, double eps) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, dp, dk] = infonce_with_grad_op().call(p, k, groups, tau, eps);
    ctx->save_for_backward({dp, dk});
    ctx->mark_non_differentiable({dp, dk});
    ctx->set_materialize_grads(false);
    return {loss, dp, dk};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& g = grads[0];
    if (!g.defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {(g * saved[0]).to(saved[0].scalar_type()), (g * saved[1]).to(saved[1].scalar_type()), Tensor(), Tensor(),
            Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> infonce_with_grad_autograd(const Tensor& p, const Tensor& k,
                                                              const std::optional<Tensor>& groups, double tau,
                                                              double eps) {
  auto out = InfonceWithGrad::apply(p, k, groups, tau, eps);
  return {out[0], out[1], out[2]};
}

// The formula of mclcore/ops/critic_grad.py (_setup_context, _backward): save v, the workspace and the parameters,
// and call critic_grad_backward.
struct CriticGrad : public torch::autograd::Function<CriticGrad> {
  static variable_list forward(AutogradContext* ctx, const Tensor& v, TensorList weights, TensorList biases,
                               c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [grad_v, workspace] = critic_grad_op().call(v, weights, biases, activation);
    variable_list to_save{v, workspace};
    to_save.insert(to_save.end(), weights.begin(), weights.end());
    to_save.insert(to_save.end(), biases.begin(), biases.end());
    ctx->save_for_backward(to_save);
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    ctx->saved_data["n"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["activation"] = std::string(activation);
    return {grad_v, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t n = ctx->saved_data["n"].toInt();
    variable_list out(static_cast<size_t>(2 + 2 * n));  // v, weights..., biases..., activation
    if (!grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const std::vector<Tensor> weights(saved.begin() + 2, saved.begin() + 2 + n);
    const std::vector<Tensor> biases(saved.begin() + 2 + n, saved.end());
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [gv, gw, gb] = critic_grad_backward_op().call(grads[0], saved[0], weights, biases, saved[1], activation);
    out[0] = gv;
    for (int64_t l = 0; l < n; ++l) {
      out[1 + l] = gw[l];
      out[1 + n + l] = gb[l];
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> critic_grad_autograd(const Tensor& v, TensorList weights, TensorList biases,
                                                c10::string_view activation) {
  auto out = CriticGrad::apply(v, weights, biases, activation);
  return {out[0], out[1]};
}

std::unique_ptr<torch::Library> registration;

void enable() {
  if (registration) return;
  registration = std::make_unique<torch::Library>(torch::Library::IMPL, "mclcore", c10::DispatchKey::AutogradCPU,
                                                  __FILE__, __LINE__);
  registration->impl("infonce_with_grad", TORCH_FN(infonce_with_grad_autograd));
  registration->impl("critic_grad", TORCH_FN(critic_grad_autograd));
}

void disable() { registration.reset(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("enable", &enable, "route CPU autograd of infonce_with_grad and critic_grad through the C++ formulas");
  m.def("disable", &disable, "drop that registration: back to the formulas registered with register_autograd");
}
