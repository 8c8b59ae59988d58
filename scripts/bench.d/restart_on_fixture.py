"""The restart measurement of scripts/bench, on a fixture a `--keep` run left.

Populating 100 000 ready files takes about 14 minutes; this measures any
binary on a kept one instead, with the harness's own code:

    scripts/bench --only restart --rounds 1 --keep     # once, note its run dir
    python3 scripts/bench.d/restart_on_fixture.py RUN_DIR/restart \
        target/release/tl-ingest LABEL [ROUNDS]

Prints, per layout (one tree, 100 roots) and round: time to READY=1, RSS,
when CPU went quiet, the start-up scan's log line (seconds from start,
files, elapsed ms), peak RSS, and CPU in the 3 s after.
"""
import importlib.machinery, importlib.util, sys, time
from pathlib import Path
loader = importlib.machinery.SourceFileLoader(
    "bench", str(Path(__file__).resolve().parent.parent / "bench"))
spec = importlib.util.spec_from_loader("bench", loader)
b = importlib.util.module_from_spec(spec)
loader.exec_module(b)
fixture, binary, label = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
b.BIN = binary
class Ctx: pass
try:
    for layout in ("tree", "roots"):
        for r in range(rounds):
            name = f"ab-{label}-{layout}-{r}"
            (fixture / f"{name}.log").unlink(missing_ok=True)
            d = b.Daemon(Ctx(), fixture / f"{layout}.toml", fixture, name=name)
            st = b.proc_status(d.pid)
            ready_s = d.ready - d.t0
            settled = b.wait_cpu_settle(d.pid, timeout=60)
            line = b.log_line(d.log, "start-up scan finished")
            scan = None
            if line:
                f = b.log_fields(line)
                scan = (b.log_time(line) - d.t0_wall, f.get("files"), f.get("elapsed_ms"))
            c0, t0 = b.cpu_ticks(d.pid), time.perf_counter()
            time.sleep(3)
            busy = (b.cpu_ticks(d.pid) - c0) / b.CLK_TCK / (time.perf_counter() - t0) * 100
            st2 = b.proc_status(d.pid)
            d.close()
            print(f"{label} {layout} r{r}: READY {ready_s*1000:.0f} ms (RSS {st['VmRSS']/1024:.1f} MiB);"
                  f" CPU settled {'-' if settled is None else f'{settled - d.t0:.3f} s'};"
                  f" log: {scan}; peak RSS {st2['VmHWM']/1024:.1f} MiB; CPU after {busy:.0f} %", flush=True)
finally:
    b.cleanup_procs()
