// Every op schema of the `mclcore` library, declared once. Kernels register per dispatch key in
// csrc/<op>/<op>_cpu.cpp (CPU) and csrc/<op>/<op>_cuda.cu (CUDA); mclcore/ops/<op>.py adds the fake (meta) kernel
// and the autograd formula, so PyTorch routes by device and no Python code branches on it.
#include <Python.h>
#include <torch/library.h>

// `import mclcore._C` loads this shared object, which runs the registrations below. The module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mclcore, m) {
  // InfoNCE over row-normalised projections (DESIGN 2.1). p, k: (B, d). groups: optional (B,) int64 condition ids;
  // when given, every j with groups[j] == groups[i] is a positive of row i ("multi-positive", SupCon's L_in form:
  // loss_i = logsumexp_j S_ij - logsumexp_{j in P(i)} S_ij). Returns (loss: scalar, lse_all: (B,), lse_pos: (B,)),
  // both row statistics in float32/float64; memory O(B d), never a B x B tensor.
  m.def("infonce(Tensor p, Tensor k, Tensor? groups, float tau, float eps) -> (Tensor, Tensor, Tensor)");
  // Gradient of infonce's loss w.r.t. p and k, recomputing S tile by tile from the saved row statistics.
  m.def(
      "infonce_backward(Tensor grad_loss, Tensor p, Tensor k, Tensor? groups, Tensor lse_all, Tensor lse_pos, "
      "float tau, float eps) -> (Tensor, Tensor)");

  // Input gradient of a scalar MLP critic c(v) = w_L . s(... s(W_1 v + b_1) ...) + b_L (DESIGN 2.2).
  // v: (B, dv); weights[l]: (out_l, in_l) as nn.Linear, the last (1, h); biases[l]: (out_l,).
  // activation: gelu | relu | silu | tanh | softplus. Returns grad_v c: (B, dv).
  m.def("critic_grad(Tensor v, Tensor[] weights, Tensor[] biases, str activation) -> Tensor");
  // Backward of critic_grad: given G = dL/d(grad_v c), returns dL/dv, dL/dW_l, dL/db_l. Exact (uses s''), so
  // training through the mechanism gradient equals autograd with create_graph=True.
  m.def(
      "critic_grad_backward(Tensor grad_out, Tensor v, Tensor[] weights, Tensor[] biases, str activation) "
      "-> (Tensor, Tensor[], Tensor[])");

  // mech_derivs: see csrc/mech_derivs/ (schemas added below by that op).
}
