"""The CUDA layer of the runtime: cuda-python host API, NVRTC-compiled kernels, tables.

Modules (each imports cuda-python lazily, so importing them never needs a GPU):

* :mod:`deeplab_trt.runtime.cuda.api`       devices, device/pinned/mapped memory, streams, events, graphs
* :mod:`deeplab_trt.runtime.cuda.compile`   NVRTC compile of ``kernels.cu`` for an architecture, disk cache
* :mod:`deeplab_trt.runtime.cuda.kernels`   launch wrappers (argument packing, grids, per-geometry tables)
* :mod:`deeplab_trt.runtime.cuda.tables`    sampling tables from the references' own formulas (numpy)
* :mod:`deeplab_trt.runtime.cuda.inference` the device inference step (TensorRT runner, host adapter)
* :mod:`deeplab_trt.runtime.cuda.dlpack`    DLPack capsules in ctypes (interop without torch/CuPy)
"""
