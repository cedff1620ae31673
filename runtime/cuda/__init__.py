"""The CUDA layer of the runtime: cuda-python host API, NVRTC-compiled kernels, tables.

Modules (each imports cuda-python lazily, so importing them never needs a GPU):

* :mod:`runtime.cuda.api`       devices, device/pinned/mapped memory, streams, events, graphs
* :mod:`runtime.cuda.compile`   NVRTC compile of ``kernels.cu`` for an architecture, disk cache
* :mod:`runtime.cuda.kernels`   launch wrappers (argument packing, grids, per-geometry tables)
* :mod:`runtime.cuda.tables`    sampling tables from the references' own formulas (numpy)
* :mod:`runtime.cuda.inference` the device inference step (TensorRT runner, host adapter)
* :mod:`runtime.cuda.dlpack`    DLPack capsules in ctypes (interop without torch/CuPy)
"""
