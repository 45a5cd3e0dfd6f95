# Sourced by the scripts that run on the lent GPU machine (device_check.sh, device_multi_gpu.sh,
# device_service.sh): unpacks the carried shared libraries (.carry/lib.tar.xz, made by
# scripts/make_carry.sh) and sets the environment the carried binaries need there.
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[[ -f .carry/lib.tar.xz && ! -d .carry/lib ]] && tar -C .carry -xJf .carry/lib.tar.xz
[[ -f .carry/bin.tar.xz && ! -d .carry/bin ]] && tar -C .carry -xJf .carry/bin.tar.xz
# CUDA libraries: the image's toolkit, else the ones PyTorch's wheels bring.
CUDA_LIBS=/usr/local/cuda/lib64
for d in $(python3 -c "import nvidia, os; print(' '.join(os.path.join(p, x, 'lib') for p in nvidia.__path__ for x in os.listdir(p)) + ' ' + ' '.join(os.path.join(p, 'cu13', 'lib') for p in nvidia.__path__))" 2>/dev/null); do
  [[ -d $d ]] && CUDA_LIBS=$CUDA_LIBS:$d
done
export LD_LIBRARY_PATH=$PWD/.carry/lib:$CUDA_LIBS:${LD_LIBRARY_PATH:-}
export MOE_SHARED_DIR=$PWD/.carry/shared  # the tests' corpus
# mpirun as root, passing the environment on to every rank.
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE
        -x MOE_SHARED_DIR)
# Fails when a carried binary misses a shared library on this machine.
device_env_check_libs() {
  local b
  for b in .carry/bin/*; do
    if ldd "$b" | grep "not found"; then echo "device: $b misses shared libraries (above)"; return 1; fi
  done
}
