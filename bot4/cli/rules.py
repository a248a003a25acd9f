"""``bot4 rules check | eval | test`` (modelled on OPA's check / eval / test).

* ``check [PATH...]`` compiles the policy; on error prints ``file:line: what``
  and exits 1.
* ``eval --scenario FILE`` (or a scenario / facts as JSON or YAML on stdin)
  prints the decision, the rule that decided and the trace of every rule
  evaluated; ``--json`` for machines.
* ``test [PATH...]`` runs the scenario files beside the rule files
  (``PATH/tests/*.yaml``) and exits 1 if any fails.
  ``--coverage`` reports the rules that never fired and the conditions
  never seen both true and false (:mod:`bot4.risk.coverage`);
  ``--min-coverage PERCENT`` fails under a threshold.
* ``diff --recording RUN --new RULES [--old RULES]`` re-runs a recorded
  session under both policies and reports every decision that changes and
  the effect on the session (:mod:`bot4.whatif`); exits 1 when one does.
* ``facts [PATH...] [--json | --markdown]`` lists every fact a rule can
  name: bot4's, the policy's windows, the packs' (:mod:`bot4.risk.catalogue`).
* ``fmt [PATH...] [--check | --diff]`` rewrites rule and scenario files in
  one canonical layout (:mod:`bot4.risk.fmt`, as ``opa fmt``); ``--check``
  exits 1 if a file is not formatted (for CI).

PATH defaults to :func:`bot4.risk.default_rules_path`. Installed risk-rule
packs are loaded (their facts and rule files): all of them, or those named by
``--packs NAME,...``, or none with ``--no-packs``. ``check`` lists the files it
compiled and the packs in use.
Exit codes: 0 ok, 1 a check or test failed, 2 bad input (unreadable
scenario, policy that does not compile for eval, a pack that is not installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bot4.contracts import RiskRules
from bot4.errors import ConfigError, RiskError, RuleFileError
from bot4.model import Approved, Rejected
from bot4.risk import Explanation, RiskPolicy, default_rules_path
from bot4.risk.facts import describe
from bot4.risk.scenario import (
    Scenario,
    check_expected,
    load_scenarios,
    outcome_dict,
    run_scenario,
    scenario_files,
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = subparsers.add_parser("rules", help="check, evaluate and test the risk rule files")
    sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rules.set_defaults(func=lambda args: _usage(rules))

    check = sub.add_parser("check", help="compile the rule files; report file:line errors")
    _paths(check)
    check.set_defaults(func=cmd_check)

    ev = sub.add_parser("eval", help="evaluate a scenario and print the decision and trace")
    ev.add_argument(
        "--rules",
        dest="paths",
        action="append",
        type=Path,
        metavar="PATH",
        help="rule file or directory (repeatable; default: the default policy)",
    )
    ev.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="scenario file (YAML or JSON); default: read one from stdin",
    )
    ev.add_argument("--json", action="store_true", help="print JSON instead of text")
    pack_options(ev)
    ev.set_defaults(func=cmd_eval)

    test = sub.add_parser("test", help="run the scenario tests beside the rule files")
    _paths(test)
    test.add_argument(
        "--scenarios",
        type=Path,
        action="append",
        metavar="PATH",
        help="scenario file or directory (default: PATH/tests/*.yaml)",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="print every scenario")
    test.add_argument(
        "--coverage",
        action="store_true",
        help="report which rules fired and which conditions were seen true and false",
    )
    test.add_argument(
        "--min-coverage",
        type=float,
        metavar="PERCENT",
        help="fail (exit 1) when coverage is below PERCENT (implies --coverage)",
    )
    test.add_argument(
        "--coverage-json", type=Path, metavar="FILE", help="also write the coverage as JSON"
    )
    test.set_defaults(func=cmd_test)

    diff = sub.add_parser(
        "diff", help="what an edited policy would have decided in a recorded session"
    )
    diff.add_argument(
        "--recording", type=Path, required=True, metavar="RUN",
        help="a session's recording (bot4-out/recording.jsonl.gz) or its folder",
    )  # fmt: skip
    diff.add_argument(
        "--old", type=Path, action="append", metavar="RULES",
        help="the policy to compare with (default: the one recorded)",
    )  # fmt: skip
    diff.add_argument(
        "--new", type=Path, action="append", required=True, metavar="RULES",
        help="the edited policy: rule file or directory (repeatable)",
    )  # fmt: skip
    diff.add_argument("--json", action="store_true", help="print JSON instead of a table")
    diff.add_argument("--chart", type=Path, metavar="PNG", help="also draw the changes")
    diff.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep both runs' recordings in DIR/old, DIR/new"
    )
    diff.add_argument("--limit", type=int, default=20, help="changes listed in the table (20)")
    diff.set_defaults(func=cmd_diff)

    facts = sub.add_parser("facts", help="list every fact a rule can name")
    _paths(facts)
    shape = facts.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shape.add_argument("--markdown", action="store_true", help="print a Markdown table")
    facts.set_defaults(func=cmd_facts)

    fmt = sub.add_parser("fmt", help="rewrite rule and scenario files in the canonical layout")
    fmt.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="rule or scenario file, or a policy directory (default: the default policy)",
    )
    mode = fmt.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is not formatted"
    )
    mode.add_argument("--diff", action="store_true", help="write nothing; print what would change")
    fmt.set_defaults(func=cmd_fmt)


def _paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="rule file or directory (default: the default policy)",
    )
    pack_options(parser)


def pack_options(parser: argparse.ArgumentParser) -> None:
    """``--packs NAME,...`` | ``--no-packs`` (shared with ``bot4 run``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--packs",
        metavar="NAME,...",
        help="use only these installed risk-rule packs (default: every installed pack)",
    )
    group.add_argument(
        "--no-packs", action="store_true", help="use no risk-rule pack (their facts and rules)"
    )


def chosen_packs(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The packs named on the command line: None = not chosen there."""
    from bot4.risk.packs import parse_names

    if getattr(args, "no_packs", False):
        return ()
    packs: str | None = getattr(args, "packs", None)
    return None if packs is None else parse_names(packs)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _packs(args: argparse.Namespace) -> list[RiskRules]:
    wanted = chosen_packs(args)
    if wanted == ():
        return []
    from bot4.risk.packs import installed_packs

    return installed_packs(wanted)


def _rule_paths(args: argparse.Namespace) -> list[Path]:
    return list(args.paths) if args.paths else [default_rules_path()]


def _quiet() -> None:
    # Scenarios trip breakers on purpose; the outcome is printed, the
    # warning log line would only repeat it. Errors still show.
    logging.getLogger("bot4.risk").setLevel(logging.ERROR)


def _load(args: argparse.Namespace, err: TextIO, refused: int) -> RiskPolicy | int:
    """The policy, or the exit code after one line on ``err``: ``refused``
    for rules that do not compile, 2 for a pack that is not installed."""
    try:
        return RiskPolicy.load(_rule_paths(args), _packs(args))
    except RuleFileError as exc:
        print(str(exc), file=err)
        return refused
    except ConfigError as exc:
        print(f"bot4 rules: {exc}", file=err)
        return 2


def cmd_check(args: argparse.Namespace) -> int:
    policy = _load(args, sys.stderr, 1)
    if isinstance(policy, int):
        return policy
    try:
        stages = {s: len(p.rules) for s, p in policy.compiled.stages.items()}
        print(
            f"ok: {len(policy.rule_names)} rules in {len(policy.files)} files "
            f"({', '.join(f'{n} on {s}' for s, n in stages.items())})"
        )
        for f in policy.files:
            print(f"  {f}")
        print(f"risk packs: {', '.join(p.name for p in policy.packs) or 'none'}")
        print(f"sha256: {policy.digest}")
    finally:
        policy.close()
    return 0


def _read_scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.scenario is not None:
        return load_scenarios(args.scenario)
    text = sys.stdin.read()
    return load_scenarios(Path("<stdin>"), text)


def cmd_eval(args: argparse.Namespace) -> int:
    _quiet()
    policy = _load(args, sys.stderr, 2)
    if isinstance(policy, int):
        return policy
    try:
        try:
            scenarios = _read_scenarios(args)
        except RuleFileError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        outputs: list[dict[str, Any]] = []
        for scenario in scenarios:
            try:
                result = run_scenario(policy, scenario)
            except (RuleFileError, RiskError) as exc:
                print(
                    f"{scenario.path}:{scenario.line}: {exc}"
                    if isinstance(exc, RiskError)
                    else str(exc),
                    file=sys.stderr,
                )
                return 2
            if args.json:
                outputs.append(outcome_dict(scenario, result))
            else:
                print_explanation(scenario, result, sys.stdout)
        if args.json:
            json.dump(
                outputs[0] if len(outputs) == 1 else outputs, sys.stdout, indent=2, default=str
            )
            print()
    finally:
        policy.close()
    return 0


def print_explanation(scenario: Scenario | None, result: Explanation, out: TextIO) -> None:
    if scenario is not None:
        print(f"scenario: {scenario.name}  ({scenario.path}:{scenario.line})", file=out)
    decision = result.decision
    if isinstance(decision, Approved):
        print(f"decision: APPROVE  (decided by {result.decided_by})", file=out)
    elif isinstance(decision, Rejected):
        print(f"decision: REJECT  (decided by {decision.rule})", file=out)
        print(f"reason: {decision.reason}", file=out)
        print(f"suggested size: {decision.suggested_size}", file=out)
    else:
        print(f"event: {result.stage}", file=out)
        if not result.actions:
            print("actions: none", file=out)
        for action in result.actions:
            target = action.symbol or "book"
            print(
                f"action: {action.kind.value} {target} fraction={action.fraction} "
                f"(rule {action.rule}): {action.reason}",
                file=out,
            )
    print("trace (every rule evaluated, in decision order):", file=out)
    width = max((len(t.rule) for t in result.trace), default=10)
    for t in result.trace:
        mark = "=>" if t.decided else ("x " if t.fired else "  ")
        values = ", ".join(f"{k}={describe(v)}" for k, v in t.values.items())
        state = "fired" if t.fired else "-"
        print(f"  {mark} {t.rule:<{width}}  {state:<5}  {t.outcome:<15} {t.where}", file=out)
        print(f"       when: {' '.join(t.condition.split())}", file=out)
        if values:
            print(f"       with: {values}", file=out)
    interesting = (
        "liquidation.price",
        "liquidation.distance",
        "order.notional",
        "portfolio.equity",
    )
    shown = [f"{k}={describe(result.facts[k])}" for k in interesting if k in result.facts]
    if shown:
        print(f"facts: {', '.join(shown)}", file=out)
    print(file=out)


def cmd_test(args: argparse.Namespace) -> int:
    _quiet()
    policy = _load(args, sys.stderr, 1)
    if isinstance(policy, int):
        return policy
    try:
        files: list[Path] = []
        if args.scenarios:
            for p in args.scenarios:
                files.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
        else:
            for p in _rule_paths(args):
                files.extend(scenario_files(p))
        if not files:
            print("no scenario files found (looked in PATH/tests/*.yaml)", file=sys.stderr)
            return 1
        from bot4.risk.coverage import Coverage, check_minimum

        measuring = args.coverage or args.min_coverage is not None or args.coverage_json
        coverage = Coverage(policy.compiled) if measuring else None
        passed = failed = 0
        for f in files:
            try:
                scenarios = load_scenarios(f)
            except RuleFileError as exc:
                print(f"ERROR {exc}")
                failed += 1
                continue
            for scenario in scenarios:
                try:
                    result = run_scenario(policy, scenario)
                    problems = check_expected(scenario, result)
                    if coverage is not None:
                        coverage.add(result)
                except (RuleFileError, RiskError) as exc:
                    problems = [str(exc)]
                where = f"{scenario.path}:{scenario.line}"
                if problems:
                    failed += 1
                    print(f"FAIL {where}: {scenario.name}")
                    for problem in problems:
                        print(f"     {problem}")
                else:
                    passed += 1
                    if args.verbose:
                        print(f"PASS {where}: {scenario.name}")
        print(f"{passed} passed, {failed} failed")
        if coverage is None:
            return 1 if failed else 0
        for line in coverage.lines():
            print(line)
        if args.coverage_json is not None:
            args.coverage_json.write_text(json.dumps(coverage.as_dict(), indent=2) + "\n")
        under = check_minimum(coverage, args.min_coverage)
        if under is not None:
            print(f"FAIL {under}")
        return 1 if failed or under is not None else 0
    finally:
        policy.close()


def cmd_diff(args: argparse.Namespace) -> int:
    """Exit 0 when the policies decide alike, 1 when a decision changes (as
    ``diff`` does), 2 for bad input (one line)."""
    import trio

    from bot4.errors import Bot4Error
    from bot4.whatif import as_text, rules_diff

    _quiet()
    recording: Path = args.recording
    if recording.is_dir():
        recording = recording / "recording.jsonl.gz"
    if not recording.is_file():
        print(f"bot4: {recording}: no such recording", file=sys.stderr)
        return 2
    try:
        result = trio.run(lambda: rules_diff(recording, args.new, args.old, keep=args.keep))
    except Bot4Error as exc:
        print(f"bot4: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        for line in as_text(result, args.limit):
            print(line)
    if args.chart is not None:
        from bot4.whatif_chart import write_diff_chart

        write_diff_chart(result, args.chart)
        if not args.json:
            print(f"chart: {args.chart}")
    return 1 if result.changes else 0


def cmd_facts(args: argparse.Namespace) -> int:
    """The fact catalogue of the policy at PATH with the packs in use."""
    from bot4.risk.catalogue import as_markdown, as_table, catalogue

    policy = _load(args, sys.stderr, 2)
    if isinstance(policy, int):
        return policy
    try:
        entries = catalogue(policy.compiled.windows, policy.packs)
    finally:
        policy.close()
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
    elif args.markdown:
        sys.stdout.write(as_markdown(entries))
    else:
        sys.stdout.write(as_table(entries))
    return 0


def _yaml_files(paths: Sequence[Path]) -> list[Path]:
    """A directory is a policy: its rule files and those of its ``tests/``
    (scenarios) and ``examples/`` folders, as ``bot4 rules test`` reads them."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for folder in (path, path / "tests", path / "examples"):
                files.extend(sorted(folder.glob("*.yaml")))
        else:
            files.append(path)
    return files


def cmd_fmt(args: argparse.Namespace) -> int:
    """Exit 0 when every file is (now) formatted, 1 with ``--check`` when one
    is not, 2 for a file that cannot be read or is not YAML (one line each;
    no file is written then, so a run never stops half-way)."""
    from bot4.risk.fmt import Formatted, format_file

    files = _yaml_files(list(args.paths) or [default_rules_path()])
    if not files:
        print("bot4 rules fmt: no *.yaml files found", file=sys.stderr)
        return 2
    results: list[Formatted] = []
    bad = 0
    for path in files:
        try:
            results.append(format_file(str(path)))
        except RuleFileError as exc:
            print(f"bot4: {exc}", file=sys.stderr)
            bad += 1
    if bad:
        return 2
    changed = [r for r in results if r.changed]
    if args.diff:
        import difflib

        for r in changed:
            sys.stdout.writelines(
                difflib.unified_diff(
                    r.original.splitlines(True),
                    r.text.splitlines(True),
                    r.path,
                    r.path + " (formatted)",
                )
            )
    elif args.check:
        for r in changed:
            print(f"would reformat {r.path}")
    else:
        for r in changed:
            _write(Path(r.path), r.text)
            print(f"reformatted {r.path}")
    verb = "would be reformatted" if args.check or args.diff else "reformatted"
    print(f"{len(changed)} files {verb}, {len(results) - len(changed)} already formatted")
    return 1 if changed and (args.check or args.diff) else 0


def _write(path: Path, text: str) -> None:
    # A whole file or none: a crash never leaves a rule file half written.
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bot4.cli.rules ...``: the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="bot4")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rules", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
