"""``bot4 run`` (a session: paper on bundled data by default) and ``bot4 replay``."""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from bot4.errors import ConfigError, ExchangeError
from bot4.feeds import DEFAULT_INTERVAL, DEFAULT_STALE_AFTER
from bot4.secrets import redact

_DEBUG = "on an error, show the traceback (same as bot4 --debug)"


def add_commands(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a trading session (default: paper trading on the bundled sample data)",
        description="Run a session. With no options: the paper exchange on the bundled sample "
        "data, the sma_cross strategy and the default rules; no server needed.",
    )
    run.add_argument(
        "--data",
        help="tick or candle file (CSV, .csv.gz), or catalog:EXCHANGE/SYMBOL[,SYMBOL]/TIMEFRAME "
        "(stored by bot4 data download/import); default: bundled sample",
    )
    run.add_argument(
        "--from", dest="data_from", metavar="WHEN", help="with --data catalog:...: first day/time"
    )
    run.add_argument(
        "--to", dest="data_to", metavar="WHEN", help="with --data catalog:...: end (exclusive)"
    )
    run.add_argument(
        "--catalog", metavar="DIR", help="catalog folder (default: $BOT4_CATALOG, else ./bot4-data)"
    )
    live = run.add_argument_group(
        "live feed", "paper trading on live market data (see bot4.feeds); no keys needed"
    )
    live.add_argument(
        "--feed",
        metavar="NAME:SOURCE",
        help="market data from a feed plugin instead of --data, e.g. ccxt:binance "
        "(bot4 plugins list shows the feeds); orders are filled by the paper engine",
    )
    live.add_argument(
        "--symbols", metavar="SYM,SYM", help="with --feed: the symbols, e.g. BTC-USDT,ETH-USDT"
    )
    live.add_argument(
        "--feed-interval",
        type=float,
        metavar="SECONDS",
        help=f"with --feed: seconds between polls (default: {DEFAULT_INTERVAL:g})",
    )
    live.add_argument(
        "--feed-url",
        metavar="URL",
        help="with --feed ccxt:...: send the venue's requests to this host (a local fake "
        "venue, a proxy)",
    )
    live.add_argument(
        "--stale-after",
        type=float,
        metavar="SECONDS",
        help="with --feed: no new data for a symbol this long halts new entries in it until "
        f"data comes back (default: {DEFAULT_STALE_AFTER:g})",
    )
    live.add_argument(
        "--duration",
        metavar="DURATION",
        help="end the session after this long (90s, 10m, 2h, 1d), as a SIGINT would",
    )
    live.add_argument(
        "--until",
        metavar="WHEN",
        help="end the session at this time (2026-12-01T14:00Z; HH:MM is UTC today)",
    )
    run.add_argument("--strategy", help="strategy plugin name (default: sma_cross)")
    run.add_argument("--exchange", help="exchange plugin name (default: paper)")
    run.add_argument(
        "--rules",
        action="append",
        help="rule file or folder (repeatable); default: the default policy",
    )
    run.add_argument(
        "--shadow-rules",
        action="append",
        metavar="RULES",
        help="a candidate policy (file or folder, repeatable) asked beside the live one on "
        "every order, tick and fill, never deciding; disagreements are counted and recorded",
    )
    run.add_argument(
        "--config", type=Path, help="YAML session config; options given here override it"
    )
    from bot4.cli.rules import pack_options

    pack_options(run)
    run.add_argument(
        "--speed", type=float, help="0 = as fast as possible (default); 1 = real time; 60 = 60x"
    )
    run.add_argument(
        "--out", help="output folder for summary, chart and recording (default: bot4-out)"
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics while the session runs "
        "(0 = any free port; the address is printed on stderr)",
    )
    run.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the metrics endpoint binds to (default: 127.0.0.1; 0.0.0.0 in a container)",
    )
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser(
        "replay", help="re-run a recorded session and check every decision matches"
    )
    rep.add_argument(
        "recording",
        type=Path,
        help="recording.jsonl.gz (or an older plain recording.jsonl) written by bot4 run",
    )
    rep.add_argument("--out", type=Path, help="keep the replay's own recording here")
    rep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    rep.set_defaults(func=cmd_replay)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from bot4.cli.rules import chosen_packs
    from bot4.cli.signals import SignalStop
    from bot4.session import count_rows, data_path, load_config, progress_bar, run_session

    # Bad options, config values and rule files raise Bot4Error: bot4.cli.main
    # prints them as one line and exits 2.
    config = load_config(
        args.config,
        {
            "data": args.data,
            "strategy": args.strategy,
            "exchange": args.exchange,
            "rules": args.rules,
            "speed": args.speed,
            "out": args.out,
            "packs": chosen_packs(args),
            "shadow_rules": args.shadow_rules,
        },
    )
    live = _live_feed(args, config)
    feed, total = (None, None) if live is not None else _catalog_feed(args, config)
    if feed is not None:
        config = attrs.evolve(config, data=feed[0])
    elif sys.stderr.isatty() and live is None:
        total = count_rows(data_path(config))
    progress = progress_bar(total if sys.stderr.isatty() else None, sys.stderr)
    stop = SignalStop()
    with ExitStack() as stack:
        stack.enter_context(stop.installed())
        metrics = None
        if args.metrics_port is not None:
            from bot4.metrics import Metrics

            metrics = Metrics()
            try:
                server = stack.enter_context(metrics.serve(args.metrics_port, args.metrics_addr))
            except OSError as exc:
                print(
                    f"bot4 run: cannot serve metrics on {args.metrics_addr}:"
                    f"{args.metrics_port}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                return 1
            print(f"metrics: {server.url}", file=sys.stderr, flush=True)
        stack.enter_context(_fewer_collections())
        result = trio.run(
            lambda: run_session(
                config,
                progress=progress,
                metrics=metrics,
                on_kernel=stop.attach,
                announce=_say,
                feed=live.watch if live is not None else None if feed is None else feed[1],
                manager=None if live is None else live.manager,
                services=_services(args, config, live),
            )
        )
        # Still under the handlers: a second signal while the summary and the
        # chart are written exits at once.
        if progress is not None:
            sys.stderr.write("\n")
        _write_outputs(args, config.out, result)
    if result.error is not None:
        # A bad data row (or a venue that gave up) ended the session; everything
        # up to it is written.
        print(f"bot4: {redact(str(result.error))}", file=sys.stderr)
        return 1 if isinstance(result.error, ExchangeError) else 2
    return 0


# The youngest generation's threshold during a session (CPython's default is
# 700 allocations). A session allocates a few objects per tick that mostly die
# young and hold no cycle (ticks, rows, events), and batches of thousands of
# them stay alive for a moment: at 700 the collector ran some 2,000 times in
# the default session, the full collections scanning every object imported,
# about a tenth of its CPU. Cycles are still collected, 50,000 allocations
# apart: a few MB at most in garbage waiting.
SESSION_GC_YOUNG = 50_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the session (or its replay) with the young generation collected
    less often, and what is alive before it (modules, config, plugins)
    frozen: never scanned again, being never garbage. Both are undone after
    (the commands run in the caller's process too, e.g. in tests)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(SESSION_GC_YOUNG, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


@attrs.frozen
class _Live:
    """What ``--feed`` built: the plugins (the feed's among them) and its watch."""

    manager: Any  # bot4.plugins.PluginManager
    watch: Any  # bot4.feeds_watch.FeedWatch


def _live_feed(args: argparse.Namespace, config: Any) -> _Live | None:
    """For ``--feed NAME:SOURCE`` (or ``feed:`` in the config file; an option
    given here overrides the file's): the feed plugin's feed, watched for
    staleness."""
    live_only = {
        "--symbols": args.symbols,
        "--feed-interval": args.feed_interval,
        "--feed-url": args.feed_url,
        "--stale-after": args.stale_after,
    }
    configured: dict[str, Any] = dict(config.feed or {})
    where = config.origin.get("feed", "config")
    if args.feed is None and not configured:
        given = [name for name, value in live_only.items() if value is not None]
        if given:
            raise ConfigError(f"{given[0]}: only with --feed NAME:SOURCE")
        return None
    from bot4.feeds import FeedConfig, parse_feed_spec, parse_symbols
    from bot4.feeds_watch import FeedWatch
    from bot4.plugins import PluginManager

    named = configured.pop("name", None)
    if args.feed is not None:
        if named is not None and named != args.feed:
            configured = {}  # the file's settings are another feed's
        spec, spec_where = args.feed, "--feed"
    elif isinstance(named, str):
        spec, spec_where = named, f"{where}: feed.name"
    else:
        raise ConfigError(f"{where}: feed: name the feed (name: ccxt:binance)")
    if args.data is not None or config.data is not None:
        raise ConfigError("--feed: market data comes from the feed; drop --data")
    if config.exchange != "paper":
        raise ConfigError(
            f"--feed: only with --exchange paper (the paper engine fills the orders); "
            f"{config.exchange!r} streams its own market data"
        )
    if config.speed:
        raise ConfigError("--speed: a live feed runs in real time; drop --speed with --feed")
    name, source = parse_feed_spec(spec, spec_where)
    raw_symbols = configured.pop("symbols", None)
    if args.symbols is not None:
        symbols = parse_symbols(args.symbols)
    elif raw_symbols is not None:
        symbols = parse_symbols(raw_symbols, f"{where}: feed.symbols")
    else:
        raise ConfigError("--feed: name the symbols, e.g. --symbols BTC-USDT,ETH-USDT")
    interval = _seconds(
        args.feed_interval, configured.pop("interval", None), "--feed-interval", where, "interval"
    )
    stale_after = _seconds(
        args.stale_after, configured.pop("stale_after", None), "--stale-after", where, "stale_after"
    )
    interval = DEFAULT_INTERVAL if interval is None else interval
    stale_after = DEFAULT_STALE_AFTER if stale_after is None else stale_after
    if args.feed_url is not None:
        configured["api_url"] = args.feed_url
    feed_config = FeedConfig(name, source, symbols, interval, configured)
    manager = PluginManager.load()
    registered = manager.registry.feed(name)
    try:
        feed = registered.factory(feed_config.factory_config())
    except ConfigError as exc:
        if config.feed and where != "config":  # a setting of the file's feed: its line
            raise ConfigError(f"{where}: {exc}") from None
        raise
    except Exception as exc:  # a feed plugin's factory may raise anything
        raise ConfigError(
            f"--feed {feed_config.spec}: the {registered.plugin!r} plugin's feed failed to "
            f"start: {type(exc).__name__}: {redact(str(exc))}"
        ) from None
    from bot4.feeds import Feed

    if not isinstance(feed, Feed):
        raise ConfigError(
            f"--feed {feed_config.spec}: the {registered.plugin!r} plugin's factory returned "
            f"{type(feed).__name__}, not a bot4.feeds.Feed"
        )
    return _Live(manager, FeedWatch(feed, feed_config, stale_after=stale_after))


def _seconds(
    given: float | None, configured: object, flag: str, where: str, key: str
) -> float | None:
    """A positive number of seconds from the command line, else the file."""
    value: object = given if given is not None else configured
    if value is None:
        return None
    name = flag if given is not None else f"{where}: feed.{key}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: {value!r} is not a number of seconds")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name}: {value:g} must be a positive number of seconds")
    return float(value)


def _services(args: argparse.Namespace, config: Any, live: _Live | None) -> Any:
    """The session's services: the default ones, the feed's watch, the clock's stop."""
    from bot4.feeds import parse_duration, parse_until
    from bot4.feeds_watch import stop_after
    from bot4.session import default_services

    if args.duration is not None and args.until is not None:
        raise ConfigError("--duration and --until: give one of them")
    extra = []
    if live is not None:
        extra.append(live.watch.service)
    if args.duration is not None:
        seconds = parse_duration(args.duration)
        extra.append(stop_after(seconds, f"--duration {args.duration} elapsed"))
    elif args.until is not None:
        seconds = parse_until(args.until)
        extra.append(stop_after(seconds, f"--until {args.until} reached"))
    if not extra:
        return None  # run_session's default services
    return [*default_services(config), *extra]


def _catalog_feed(args: argparse.Namespace, config: Any) -> tuple[Any, int | None]:
    """For ``--data catalog:...``: ((the spec with --from/--to written into it,
    its ticks), the tick count for the progress bar); (None, None) otherwise."""
    from bot4.data.catalog_feed import is_catalog_spec

    if not is_catalog_spec(config.data):
        if args.data_from or args.data_to:
            raise ConfigError("--from/--to: only with --data catalog:EXCHANGE/SYMBOL/TIMEFRAME")
        return None, None
    from bot4.data.catalog import Catalog
    from bot4.data.catalog_feed import count_ticks, iter_catalog_ticks, parse_spec

    spec = parse_spec(config.data, start=args.data_from, end=args.data_to)
    catalog = Catalog(args.catalog)
    ticks = iter_catalog_ticks(catalog, spec)
    total = count_ticks(catalog, spec) if sys.stderr.isatty() else None
    return (spec.text(), ticks), total


def _write_outputs(args: argparse.Namespace, out_dir: str, result: Any) -> None:
    from bot4.session_summary import resumed_text, summary_json

    summary = result.report.finish(result.stats)
    summary.wall_seconds = result.wall_seconds
    out = Path(out_dir)
    document = summary_json(summary, result.report, result.history)
    if result.shadow is not None:
        document["shadow"] = result.shadow
        counts = ", ".join(f"{n} {k}" for k, n in result.shadow["disagreements"].items())
        _say(
            f"shadow policy: {result.shadow['total']} disagreements over "
            f"{result.shadow['orders']} orders, {result.shadow['ticks']} held ticks, "
            f"{result.shadow['fills']} fills" + (f" ({counts})" if counts else "")
        )
    (out / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    chart_path = None
    if not args.no_chart:
        from bot4.chart import write_chart

        try:
            chart_path = write_chart(result.report, out / "chart.png")
        except ImportError as exc:
            print(f"chart skipped: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(summary.as_text())
        resumed = resumed_text(document)
        if resumed is not None:
            print(resumed)
        if result.stopped is not None and result.error is None:
            print(f"stopped: {result.stopped} after {result.stats.ticks:,} ticks")
        print(f"summary: {out / 'summary.json'}")
        if chart_path is not None:
            print(f"chart:   {chart_path}")
        if result.recording is not None:
            print(f"replay:  bot4 replay {result.recording}")
    sys.stdout.flush()


def cmd_replay(args: argparse.Namespace) -> int:
    from bot4.replay import replay

    # A recording that cannot be replayed (unreadable, missing plugins) raises
    # Bot4Error: one line, exit 2 (bot4.cli.main). A difference exits 1.
    with _fewer_collections():  # a replay runs the session again: the same loop
        result = trio.run(replay, args.recording, args.out)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.matched:
        print(f"replay matched: {result.compared} decisions, orders and fills identical")
        return 0
    print(f"replay differs after {result.compared} matching events: {result.mismatch}")
    return 1
