// hessext._C: every op schema in one place, plus the module stub that lets `import hessext._C` load this
// shared object (loading it runs the STABLE_TORCH_LIBRARY registrations below and in csrc/cpu, csrc/cuda).
// Built against torch's stable ABI, so one .abi3.so serves every torch >= the target version.
#include <Python.h>

#include <torch/csrc/stable/library.h>

// Keep in step with hessext/_backend.py SCHEMAS (the Python fallback defines the same ones).
STABLE_TORCH_LIBRARY(hessext, m) {
  m.def("reorthogonalize(Tensor w, Tensor basis, int passes=2) -> (Tensor, Tensor, Tensor)");
  m.def("rademacher_(Tensor(a!) out, int seed, int offset) -> ()");
}

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "hessext compiled kernels (ops registered in "
                               "torch.ops.hessext)", -1, nullptr};
  return PyModule_Create(&module);
}
