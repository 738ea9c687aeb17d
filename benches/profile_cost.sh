#!/bin/bash
# What the heap profile costs: the median CPU time (user + sys) of 25 interleaved runs of
# each workload with RAMPART_PROFILE=heap and without, and their ratio. Uses the C
# workloads the benchmark suite compiled (run `cargo run --release --bin bench -- --quick`
# once first: they are in target/bench/) at 1/10 of their size, and the suite's python3
# and sqlite3 rows at their quick size. Run from the repository root:
#   bash benches/profile_cost.sh
L=${LIB:-target/release/librampart.so}
W=${BENCH_DIR:-target/bench}
PY='import json
d = {}
for i in range(30000):
    d[str(i)] = [i, str(i) * 3, {"k": i}]
s = json.dumps(d); t = json.loads(s); print(len(s))'
one() { /usr/bin/time -f "%U %S" "$@" 2>&1 >/dev/null | tail -1 | awk '{print $1+$2}'; }
for w in server prodcons shortlived fragment large churn freemany python3 sqlite3; do
  case $w in
    python3) cmd=(env PYTHONMALLOC=malloc /usr/bin/python3 -c "$PY");;
    sqlite3) cmd=(/usr/bin/sqlite3 :memory: ".read $W/bench.sql");;
    *) cmd=($W/$w 0.1);;
  esac
  offs=(); ons=()
  for i in $(seq 25); do
    offs+=($(one env LD_PRELOAD=$L "${cmd[@]}"))
    ons+=($(one env RAMPART_PROFILE=heap RAMPART_PROFILE_OUT=/dev/null LD_PRELOAD=$L "${cmd[@]}"))
  done
  python3 -c "
import statistics as s
a=[float(x) for x in '${offs[*]}'.split()]; b=[float(x) for x in '${ons[*]}'.split()]
print('$w', 'off %.3f on %.3f ratio %.3f' % (s.median(a), s.median(b), s.median(b)/s.median(a)))"
done
