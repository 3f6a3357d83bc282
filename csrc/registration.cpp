// Every op schema of the `mclcore` library, declared once (the private _cuda_<op> ones included: the .cu files hold
// only TORCH_LIBRARY_IMPL blocks). Kernels register per dispatch key in csrc/<op>/<op>_cpu.cpp (CPU) and
// csrc/<op>/<op>_cuda.cu (the _cuda_<op> twins, CUDA builds only); mclcore/ops/<op>.py adds the fake (meta) kernel,
// the autograd formula and, through mclcore/ops/_backend.py, the public op's CUDA kernel, so PyTorch routes by
// device and no Python code branches on it.
#include <Python.h>
#include <torch/library.h>

// `import mclcore._C` loads this shared object, which runs the registrations below. The module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mclcore, m) {
  // InfoNCE over row-normalised projections (docs/DESIGN.md §2.1). p, k: (B, d). groups: optional (B,) int64 condition ids;
  // when given, every j with groups[j] == groups[i] is a positive of row i ("multi-positive", SupCon's L_in form:
  // loss_i = logsumexp_j S_ij - logsumexp_{j in P(i)} S_ij). Returns (loss: scalar, lse_all: (B,), lse_pos: (B,)),
  // both row statistics in float32/float64; memory O(B d), never a B x B tensor.
  // Member-stacked (all three infonce ops, csrc/infonce/infonce_members.h): p, k (M, B, d), groups (M, B) give M
  // independent losses in one call, every output with a leading member axis (loss (M,), lse_all / lse_pos (M, B),
  // dp / dk (M, B, d)) and infonce_backward's grad_loss (M,); member m equals an unstacked call on its slices.
  // Rectangular mode (all three ops and their _cuda_ twins), `offset` given: p (B, d) local query rows against k
  // (N, d) keys, N >= 2, 0 <= offset <= N - B; the positive of row i is key offset + i, groups is (N,) (one id per
  // key; row i's own id is groups[offset + i]); loss = mean over the B rows, lse_all / lse_pos (B,), dk (N, d). The
  // cross-rank InfoNCE: the B local queries against all ranks' keys (N = world_size B), offset = rank B. offset None
  // is the square mode (k of p's shape), which equals N = B, offset = 0. Member-stacked: k (M, N, d), groups (M, N).
  m.def("infonce(Tensor p, Tensor k, Tensor? groups, float tau, float eps, int? offset=None) -> "
        "(Tensor, Tensor, Tensor)");
  // Gradient of infonce's loss w.r.t. p and k, recomputing S tile by tile from the saved row statistics.
  m.def(
      "infonce_backward(Tensor grad_loss, Tensor p, Tensor k, Tensor? groups, Tensor lse_all, Tensor lse_pos, "
      "float tau, float eps, int? offset=None) -> (Tensor, Tensor)");
  // Training path: the loss and its gradients in one call, (loss, dp, dk) = (infonce's loss, d loss/dp, d loss/dk)
  // for an upstream gradient of 1; loss as infonce's, dp and dk contiguous in the dtypes of p and k. Three B x B x d
  // matrix products where infonce + infonce_backward make four: each row block holds its rows of S over all B
  // columns (an R x B panel; all panels within max(8 MiB, B d values), MCLCORE_INFONCE_FUSED_BYTES overrides), so
  // the row statistics are final before the gradient products. Past that budget (on 2 threads, B > 8192 at
  // d = 128) it computes the same with the recompute path. Memory O(B d + 8 MiB), never a B x B tensor.
  m.def("infonce_with_grad(Tensor p, Tensor k, Tensor? groups, float tau, float eps, int? offset=None) -> "
        "(Tensor loss, Tensor dp, Tensor dk)");

  // Input gradient of a scalar MLP critic c(v) = w_L . s(... s(W_1 v + b_1) ...) + b_L (docs/DESIGN.md §2.2).
  // v: (B, dv); weights[l]: (out_l, in_l) as nn.Linear, the last (1, h); biases[l]: (out_l,).
  // activation: gelu | relu | silu | tanh | softplus. Returns (grad_v c: (B, dv), saved: 1-D workspace of
  // 4 B sum(hidden widths) values holding s(a_l), s'(a_l), s''(a_l) and the gradient-chain rows, read by the
  // backward so it recomputes nothing; not differentiable).
  // Member-stacked (both critic_grad ops): M independent critics in one call, v (M, B, dv), weights[l] (M, out_l, in_l),
  // biases[l] (M, out_l); grad_v c (M, B, dv), the workspace M per-member workspaces end to end, and the backward's
  // gradients stacked the same way. Member m equals an unstacked call on its slices.
  m.def("critic_grad(Tensor v, Tensor[] weights, Tensor[] biases, str activation) -> (Tensor, Tensor)");
  // Backward of critic_grad: given G = dL/d(grad_v c), returns dL/dv, dL/dW_l, dL/db_l. Exact (uses s''), so
  // training through the mechanism gradient equals autograd with create_graph=True.
  m.def(
      "critic_grad_backward(Tensor grad_out, Tensor v, Tensor[] weights, Tensor[] biases, Tensor saved, "
      "str activation) -> (Tensor, Tensor[], Tensor[])");

  // Mechanism derivatives V(z,u) of an MLP generator by per-sample Taylor-mode propagation (docs/DESIGN.md §2.3).
  // z: (B, dz). weights[l]: (h_l, h_{l-1}) as nn.Linear, h_{-1} = dz; biases[l]: (h_l,). The generator is
  //   y = z * film_scale + film_shift          (film_scale, film_shift: optional (B, dz); FiLM conditioning on u)
  //   a_0 = W_0 y + b_0 + in_bias              (in_bias: optional (B, h_0), e.g. W_u u when u is concatenated to z)
  //   a_l = W_l s_{l-1}(a_{l-1}) + b_l,  x = a_{L-1}, or s_{L-1}(a_{L-1}) when activations has L entries.
  // activations[l]: tanh | sigmoid | softplus | gelu | silu | smooth_leaky | relu | leaky_relu | identity, with
  // act_params[l] the softplus beta or the (smooth) leaky slope (ignored by the others). dx = h_{L-1} >= dz.
  // Returns (V: (B, 2 dz), L: (B,)), contiguous, in z's dtype: L = 1/2 logdet(J^T J) with J = dx/dz (dx x dz),
  // V = (dL/dz_1..dL/dz_dz, d2L/dz_1^2..d2L/dz_dz^2). float32 inputs propagate in float32; the dz x dz algebra
  // always runs in float64. A numerically rank-deficient J (relative Cholesky pivot of J^T J < 1e-13, about
  // cond(J) > 3e6) gives V = NaN, L = -inf. relu / leaky_relu / identity generators are piecewise linear, so
  // V = 0 almost everywhere (the Python wrapper reports it).
  // NOT differentiable: no gradient flows through V or L; autograd raises if one is requested.
  m.def(
      "mech_derivs(Tensor z, Tensor[] weights, Tensor[] biases, Tensor? in_bias, Tensor? film_scale, "
      "Tensor? film_shift, str[] activations, float[] act_params) -> (Tensor, Tensor)");

  // Compositional contrast of an MLP generator (docs/DESIGN.md §2.5), per sample with J = dx/dz (dx x dz):
  //   C = sum_n sum_{i<j} |J_ni| |J_nj|,   Q = sum_{n,i} J_ni^2   (Q: for the scale-free normalisation C / Q).
  // z, weights, biases, in_bias, activations, act_params as mech_derivs (no FiLM inputs; any dx >= 1). J by forward
  // mode (one GEMM per layer over the value and dz tangent rows of each sample). Returns (C: (B,), Q: (B,), saved:
  // 1-D workspace of the layer stacks, read by the backward so it recomputes nothing; not differentiable), C and Q
  // contiguous in z's dtype (float32 or float64).
  m.def(
      "comp_contrast(Tensor z, Tensor[] weights, Tensor[] biases, Tensor? in_bias, str[] activations, "
      "float[] act_params) -> (Tensor, Tensor, Tensor)");
  // Backward of comp_contrast: given grad_c, grad_q (B,), returns dL/dz (B, dz), dL/dW_l, dL/db_l and dL/d in_bias
  // (B, h_0; returned whether in_bias was given or not: it is the first layer's pre-activation adjoint). Exact
  // (reverse mode through the forward-mode Jacobian, s'' included). Not itself differentiable (no double backward).
  m.def(
      "comp_contrast_backward(Tensor grad_c, Tensor grad_q, Tensor z, Tensor[] weights, Tensor[] biases, "
      "Tensor? in_bias, Tensor saved, str[] activations, float[] act_params) -> (Tensor, Tensor[], Tensor[], Tensor)");

  // The CUDA C++ twins of the public ops, private: each has its public op's schema under the name _cuda_<op>, and
  // mclcore/ops/_backend.py (its OPS table lists them) calls it from the public op's CUDA kernel when the "cuda"
  // backend is selected. They get a kernel ONLY in CUDA builds, from the TORCH_LIBRARY_IMPL(mclcore, CUDA) blocks of
  // csrc/<op>/<op>_cuda.cu; a CPU-only build declares them with no kernel at all, so whether one can run is a
  // question for the dispatcher (mclcore.ops._backend.cuda_available), not hasattr(torch.ops.mclcore, ...).
  // critic_grad and critic_grad_backward have no twin (their GPU implementation is the Triton one).
  m.def("_cuda_infonce(Tensor p, Tensor k, Tensor? groups, float tau, float eps, int? offset=None) -> "
        "(Tensor, Tensor, Tensor)");
  m.def(
      "_cuda_infonce_backward(Tensor grad_loss, Tensor p, Tensor k, Tensor? groups, Tensor lse_all, "
      "Tensor lse_pos, float tau, float eps, int? offset=None) -> (Tensor, Tensor)");
  m.def("_cuda_infonce_with_grad(Tensor p, Tensor k, Tensor? groups, float tau, float eps, int? offset=None) -> "
        "(Tensor loss, Tensor dp, Tensor dk)");
  m.def(
      "_cuda_mech_derivs(Tensor z, Tensor[] weights, Tensor[] biases, Tensor? in_bias, Tensor? film_scale, "
      "Tensor? film_shift, str[] activations, float[] act_params) -> (Tensor, Tensor)");
}
