"""``mtl-bench baseline``: save, list and show the baselines that ``check`` compares against.

``baseline save NAME --runs-dir DIR`` compacts the run records of DIR (keys, config, config
hash, code hashes, machine fingerprint, status, test metrics at the selected epoch, throughput;
no curves) into ``results/baselines/NAME/baseline.json``, together with the speed entries of
DIR/speed.json when `mtl-bench speed` measured there (what `check --speed` compares).
``baseline list`` marks a baseline that cannot be read as broken and still exits 0; ``check``
and ``baseline show`` on a broken baseline exit 2.
"""

from __future__ import annotations

import argparse

from mtl_bench.errors import UserError

HELP = "save, list or show baselines for `check`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action")
    save = sub.add_parser("save", help="create a baseline from a runs folder")
    save.add_argument("name", help="baseline name (letters, digits, '.', '_', '-')")
    save.add_argument("--runs-dir", default="runs", help="runs to save (default: runs/)")
    save.add_argument("--force", action="store_true", help="replace an existing baseline")
    save.add_argument("--note", default="", help="free text kept in the file, e.g. the command "
                                                 "that made the runs")
    listing = sub.add_parser("list", help="saved baselines, one line each")
    show = sub.add_parser("show", help="what a baseline holds, per task pair and strategy")
    show.add_argument("name", help="baseline name (as `baseline list` prints it)")
    save.add_argument("--baselines-dir", default=None, metavar="DIR",
                      help="save under DIR/NAME/ (default: ./results/baselines when it exists, "
                           "else the mtl-bench source tree's results/baselines, else "
                           "./results/baselines, created)")
    for sp in (listing, show):
        sp.add_argument("--baselines-dir", default=None, metavar="DIR",
                        help="baselines in DIR only (default: ./results/baselines, the "
                             "mtl-bench source tree's results/baselines and the copies "
                             "installed with mtl-bench, the first holding a name wins)")


def run(args: argparse.Namespace) -> int:
    from mtl_bench import baselines

    given = getattr(args, "baselines_dir", None)
    root = given or baselines.default_baselines_dir()
    if args.action == "save":
        baselines.check_name(args.name)
        from mtl_bench.store import RunStore

        store = RunStore(args.runs_dir)
        if not store.root.is_dir():
            raise UserError(f"runs folder '{store.root}' does not exist")
        loaded = store.load()
        if loaded.corrupt:
            path, reason = loaded.corrupt[0]
            raise UserError(f"{len(loaded.corrupt)} corrupt record(s) in '{store.root}' (first: "
                            f"{path}: {reason}); rerun the sweep before saving a baseline")
        if not loaded.records:
            raise UserError(f"no run records in '{store.root}'; nothing to save")
        from mtl_bench.speed import read_speed

        measured = read_speed(args.runs_dir)
        speed = measured["entries"] if measured else []
        from mtl_bench.tuning import read_spec

        doc = baselines.build_baseline(loaded.records, args.name, args.note, str(args.runs_dir),
                                       speed, read_spec(args.runs_dir))
        path = baselines.save_baseline(root, args.name, doc, force=args.force)
        n_failed = sum(r["status"] != "ok" for r in doc["runs"])
        print(f"saved baseline '{args.name}': {doc['n_runs']} runs ({n_failed} failed) and "
              f"{len(speed)} speed entries in {path}")
        if not speed:
            print("note: no speed.json in the runs folder, so `check --speed` cannot use this "
                  f"baseline; run `mtl-bench speed --runs-dir {args.runs_dir}` and save again")
        return 0
    if args.action == "list":
        roots = [r for r in baselines.baseline_roots(given) if r.is_dir()]
        seen: set[str] = set()
        for folder in roots:
            items = baselines.list_baselines(folder)
            if not items or len(roots) > 1:
                print(f"{'no baselines in' if not items else 'in'} {folder}/"
                      + (":" if items else ""))
            for b in items:
                hidden = " (hidden by the one above: check and show use that)" \
                    if b["name"] in seen else ""
                seen.add(b["name"])
                if "error" in b:
                    print(f"{b['name']:<16} broken: {b['error']}{hidden}")
                else:
                    speed = f"{b['speed']} speed entries" if b["speed"] else "no speed"
                    print(f"{b['name']:<16} {b['runs']:>4} runs  {speed}  {b['created']}  "
                          f"{', '.join(b['pairs'])}  {b['note']}{hidden}")
        if not roots:
            print("no baselines in " + ", ".join(f"{r}/" for r in baselines.baseline_roots(given)))
        return 0  # listing works even when a baseline is broken; check/show on it exit 2
    if args.action == "show":
        return _show(baselines.load_baseline(baselines.find_baseline(args.name, given),
                                             args.name))
    raise UserError("baseline: choose an action: save, list or show")


def _show(doc: dict) -> int:
    import statistics

    print(f"baseline '{doc['name']}': {doc['n_runs']} runs, created {doc.get('created')}, "
          f"format version {doc['version']}")
    if doc.get("note"):
        print(f"note: {doc['note']}")
    print(f"git commit(s): {', '.join(doc.get('git_commits') or ['unknown'])}; machine(s): "
          f"{', '.join(sorted({r['machine'] for r in doc['runs']}))}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in doc["runs"]:
        groups.setdefault((r["pair"], r["strategy"]), []).append(r)
    for (pair, strategy), runs in sorted(groups.items()):
        ok = [r for r in runs if r["status"] == "ok"]
        metrics = []
        for name in (ok[0]["test"] if ok else {}):
            values = [v for r in ok if (v := r["test"].get(name)) is not None]
            if values:
                metrics.append(f"{name} {statistics.fmean(values):.4g}")
        sps = [v for r in ok if (v := r["throughput"].get("samples_per_s"))]
        speed = f"{statistics.median(sps):,.0f} samples/s" if sps else "-"
        print(f"  {pair} / {strategy}: seeds {','.join(str(r['seed']) for r in runs)}, "
              f"{len(ok)}/{len(runs)} ok; {'; '.join(metrics)}; {speed}")
    entries = doc.get("speed") or []
    if not entries:
        print("speed: none saved (`check --speed` cannot use this baseline)")
        return 0
    from mtl_bench.speed import format_interval

    print(f"speed ({len(entries)} entries; step time / fixed's in the same round, 95% interval):")
    for e in entries:
        ratio = format_interval(e.get("ratio"), e.get("ratio_low"), e.get("ratio_high"), ".2f")
        sps = "-" if e.get("samples_per_s") is None else f"{e['samples_per_s']:,.0f}"
        print(f"  {e['setting']} / {e['strategy']}: {ratio}, {e.get('verdict', '')}; "
              f"{sps} samples/s on {e['device']}, {e['threads']} thread(s), "
              f"{e['n_rounds']} rounds")
    return 0
