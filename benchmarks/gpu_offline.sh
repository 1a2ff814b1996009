#!/usr/bin/env bash
# GPU machine without network: the kit ../shared/gpu-check copied to .gpu/ in the checkout (its
# wheels, redis-server, Milvus Lite binaries); installs them, runs benchmarks/gpu.py and the CUDA
# tests. Env: IMAGES, BUDGET (s), STEPS (comma-separated), BENCH_TIMEOUT, TEST_TIMEOUT (0: no
# tests); OUT.
set -u -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl 2>&1 | tail -2
tar -xJf .gpu/whl/milvus_lite-2.5.1-stripped.tar.xz -C /tmp/site
install -m 755 .gpu/bin/redis-server /usr/local/bin/redis-server
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 RIS_MODEL_CACHE_DIR=/tmp/models
echo "install: $(( $(date +%s) - t0 ))s"; nvidia-smi -L; nproc
timeout ${BENCH_TIMEOUT:-400} python3 benchmarks/gpu.py --images ${IMAGES:-16000} --budget-s ${BUDGET:-330} --out "$OUT" ${STEPS:+--steps $STEPS} 2>&1 | grep -v -i -E "warn|pkg_resources" | tee "$OUT/bench.log"
echo "bench done: $(( $(date +%s) - t0 ))s"
[ "${TEST_TIMEOUT:-120}" = 0 ] || timeout ${TEST_TIMEOUT:-120} python3 -m pytest -q -p no:cacheprovider tests/unit/test_inference_engine.py "tests/unit/test_model_export.py::test_fp16_on_cuda_stays_within_1e_2_cosine_of_fp32" 2>&1 | tail -15 | tee "$OUT/pytest.log"
echo "all done: $(( $(date +%s) - t0 ))s"
