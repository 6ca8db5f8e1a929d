"""Render benchmarks/transfer_table.py JSON lines as the transfer table in benchmarks/RESULTS.md."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
refs = {(r["dataset"], r["per_class"]): r for r in rows if r["kind"] == "scratch_reference"}
print("| target | labelled / class | fit / val | head | frozen transfer: test acc | transfer time (s) "
      "| scratch, same wall-clock: test acc (epochs, s) | scratch reference, no time cap: test acc (epochs, s) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["kind"] != "transfer":
        continue
    s, ref = r["scratch"], refs.get((r["dataset"], r["per_class"]))
    reftxt = (f"{100 * ref['test_accuracy']:.2f} % ({ref['epochs_run']}, {ref['wall_seconds']:.1f})"
              if ref else "not run")
    print(f"| {r['dataset']} ({r['test_size']} test) | {r['per_class']} | {r['fit_size']} / {r['val_size']} "
          f"| {r['head']} | {100 * r['test_accuracy']:.2f} % (best epoch {r['best_epoch']}) "
          f"| {r['wall_seconds']:.2f} | {100 * s['test_accuracy']:.2f} % ({s['epochs_run']}, {s['wall_seconds']:.2f}) "
          f"| {reftxt} |")
