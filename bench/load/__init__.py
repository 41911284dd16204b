"""The real bot under load: N simulated users against the Discord test server, and memory.

`imagine-bot run`, in the world the end-to-end tests build (`testkit.world`: `builtin:tiny`, a
temporary SQLite file, `OMP_NUM_THREADS=1`), connects to the Discord test server, which then
plays N users: each runs one `/imagine` (Poisson arrivals in the first `--duration` seconds,
seeded), some run `/info`, some press Cancel on their progress message, some press Reroll on
their result.
Quotas and queues are set large so the run measures throughput and responsiveness.

Measured:

Issue 24's goals, each reported met or missed: first answer p99 < 100 ms, event-loop lag
p99 < 50 ms, "queued" p99 < 1 s, every job delivered once; and at 200 users over 10 s also
first answer p99 <= 15 ms and the ledger's `reserve` p99 <= 105 ms.

* time to first answer: from the server dispatching INTERACTION_CREATE to the bot's first
  callback (Discord's limit is 3 s), every interaction;
* command to "queued": from the server dispatching a job's request (`/imagine`, Reroll) to
  the bot's first message or edit on it that names the job (its progress message);
* event-loop lag of the bot while generating: the bot runs under
  `bench.botprobe` (the unchanged `bot.cli.main` plus a 20 ms sleep probe on its loop, and
  timings of its ledger calls); the gateway heartbeat gaps (250 ms heartbeats) are an
  outside estimate, and the bot's own `imagine_event_loop_lag_seconds` and
  `imagine_first_answer_seconds` histograms (`[ops] listen`) are read before and after the
  load;
* command to delivered image (p50, p95) and images/s;
* the benchmark's own loop lag (the test server and the users share one loop in this
  process: when it is late, what the server records is late too);
* jobs requested vs delivered vs database rows: nothing lost, nothing doubled;
* memory: RSS of the bot process (and any children) idle after start-up, and its peak under
  load (`VmHWM` reset through `/proc/PID/clear_refs` once idle).
* the bot's garbage collections (`bench.botprobe` keeps each one: it holds the GIL, so it
  stalls the event loop): how many, how long in all and the longest, while the commands
  arrived and during the whole load. The benchmark's own process settles its heap as the
  bot does (`bot.ops.heap`) before the load, so its collections do not make the test
  server record answers late.

    python -m bench.load_bench [--users 200] [--duration 10] [--steps 2] [--profile] [--docs]

`--stop-after S` measures a stop under load instead: the burst, then SIGTERM S seconds
later, and one line saying how long the bot took to exit with how many jobs queued.
`--profile` samples the bot with py-spy during the load (`pip install py-spy`); the loop
stall sampler, the ledger timings and the garbage collections of `bench.botprobe` run
always (`--plain` runs the bare `imagine-bot`).
Figures on a shared 2-core machine are noisy: compare runs made one after the other. A run
that sees no result delivered fails (exit status 1, one line saying so) and saves nothing.

The modules: `driver` (the simulated users), `probes` (what is measured on the bot while it
runs), `analysis` (from observations to figures), `report` (figures as text), `main` (the
command line; `python -m bench.load` or `python -m bench.load_bench`).
"""

__all__: list[str] = []
