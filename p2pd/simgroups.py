"""Groups on the deterministic simulator (issue 16): many groups, shouts, churn; the checks and figures.

How this works
--------------
`run_groups` forms the overlay (`Sim.meshed`), has ``groups`` groups of seeded sizes between
``size_min`` and ``size_max`` joined by random nodes (a node may be in several), waits until
every member's directory (`Groups.members`) lists its whole group, then:

1. **idle shouts**: a few shouts, one at a time on the quiet network, each from a random
   member of a random group; the SHOUT frames it took (the sum of every node's
   ``shout_copies_out`` before and after) against the members it went to, and the time until
   the last member stored it;
2. **churn**: over ``seconds`` simulated seconds, ``shouts`` shouts at seeded times from a
   random running member of a random group, while ``churn`` of the nodes (members among them)
   crash and restart later, and ``moves`` members leave a group and as many non-members join one;
3. **heal**: every crashed node restarts, the outboxes drain (until every shout is stored by
   every member it was addressed to that is still in its group, bounded), and a few seconds
   more, so that a duplicate would show.

What is checked, per shout (what the origin addressed: its directory at the time, kept by
`GroupSim.shout`):

* every node that was a member from before the shout to the end (``stable``) was addressed,
  unless it joined so shortly before that its record had not reached the origin yet
  (``late_joiners``, within ``JOIN_GRACE_S``: the directory is learnt from records, as gossip
  spreads them), and stored it exactly once (``missing``, ``duplicates``);
* nobody the origin did not address stored it (``unaddressed_stored``: non-members, later
  joiners), and nobody that left before the shout was sent (``left_stored``);
* nobody stored any shout more than once (``duplicates``, all nodes);
* per origin, each node's stored shouts of a group are in the order they were sent (the
  store's history: ``out_of_order``).

A member that leaves while shouts to it are in flight may or may not store them: the leave
is local and immediate (from then on it acknowledges without storing, messaging.py), so a
shout sent before the leave is stored if it arrived before, not if after.  Those pairs (the
shout sent before the leave, the member leaving after) are left out of the exactly-once
check, and only checked for no duplicates.

Figures: SHOUT copies per shout (idle window) against the members, min/median/max of
copies/members; time until every member stored a shout (p50/p99, from the watcher's event
times), idle and under churn; CPU seconds and peak memory (``ru_maxrss``), as
`simcrash.run_mass_crash` reports them.
"""

from __future__ import annotations

import random
import resource
import statistics
import time

from p2pd.settings import Settings
from p2pd.sim import Sim, few_collections, form

JOIN_GRACE_S = 10.0  # a join's record reaches the origins within this (else: `late_joiners` that are past it count as missed)


class GroupSim(Sim):
    """A `Sim` that also keeps, per shout, what its origin addressed, and when each node first stored it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shouts: dict[str, dict] = {}  # message id -> {"group", "origin", "t", "to": set of names, "n": index}
        self.first_at: dict[tuple[str, str], float] = {}  # (node name, message id) -> when its application first got it
        self._id_name = {s.id: s.name for s in self.nodes}

    def perform_to_client(self, t, s, act) -> None:
        super().perform_to_client(t, s, act)
        p = act.payload
        if act.client == b"sim-watch" and p.get("event") == "shout":
            self.first_at.setdefault((s.name, p["message"]["id"]), t)

    def shout(self, frm: str, group: str, text: str) -> str | None:
        """A shout from ``frm`` to ``group`` now; its id, or None if refused (recorded in ``refused``).
        What the origin's directory holds now is who it goes to."""
        s = self.by_name[frm]
        to = {self._id_name[m] for m in s.node.groups.members(s.node.groups.wire_of(group) or group, with_self=False)}
        reply = self.request(frm, "shout", group=group, text=text)
        if not reply or not reply.get("ok"):
            self.refused[(reply or {}).get("code", "no reply")] += 1
            return None
        mid = reply["result"]["id"]
        self.shouts[mid] = {"group": group, "origin": frm, "t": self.now, "to": to, "n": len(self.shouts)}
        return mid

    def copies(self) -> int:
        """SHOUT frames sent so far, by origins and relays (nodes up now; a restart starts its counters at 0)."""
        return sum(s.node.stats["shout_copies_out"] for s in self.nodes if s.up)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 3)


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _spread(sim: GroupSim, members: dict[str, set[str]]) -> bool:
    """Every member's directory lists its whole group."""
    for g, names in members.items():
        want = sorted(sim.by_name[n].id for n in names)
        for n in names:
            s = sim.by_name[n]
            if s.up and s.node.groups.members(g) != want:
                return False
    return True


def run_groups(nodes: int, groups: int = 50, size_min: int = 5, size_max: int = 40, shouts: int = 200, seconds: float = 60.0,
               churn: float = 0.1, moves: int | None = None, idle_shouts: int = 10, seed: int = 1, seeds: int = 3,
               settings: Settings | None = None, warmup_limit_s: float = 300.0, spread_limit_s: float = 60.0,
               drain_limit_s: float = 300.0, progress=None) -> dict:
    """The groups scenario (see the top of this module); returns its report.  ``churn``: the share
    of nodes that crash once during the workload and restart later; ``moves``: members that leave
    a group and non-members that join one (each; default: one per group)."""
    with few_collections():
        return _run_groups(nodes, groups, size_min, size_max, shouts, seconds, churn, groups if moves is None else moves,
                           idle_shouts, seed, seeds, settings, warmup_limit_s, spread_limit_s, drain_limit_s,
                           progress or (lambda text: None))


def _run_groups(nodes, n_groups, size_min, size_max, n_shouts, seconds, churn, moves, idle_shouts, seed, seeds, settings,
                warmup_limit_s, spread_limit_s, drain_limit_s, say) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim = GroupSim(nodes, seed, settings=settings, seeds=seeds)
    warmup, formed, formed_cpu = form(sim, warmup_limit_s, cpu0)
    say(f"formed={formed} warmup_s={warmup} cpu_s={formed_cpu:.1f}")
    rng = random.Random(f"groups:{seed}")
    names = [s.name for s in sim.nodes]
    gnames = [f"g{i:02d}" for i in range(n_groups)]
    members: dict[str, set[str]] = {}  # group -> its members now
    joined_at: dict[tuple[str, str], float] = {}  # (group, name) -> when it joined (its last join)
    left_at: dict[tuple[str, str], float] = {}  # (group, name) -> when it left
    ever: dict[str, set[str]] = {}  # group -> every node that was ever in it
    for g in gnames:
        size = rng.randint(min(size_min, nodes), min(size_max, nodes))
        members[g] = set(rng.sample(names, size))
        ever[g] = set(members[g])
        for n in sorted(members[g]):
            r = sim.request(n, "join", group=g)
            if not (r and r["ok"]):
                raise RuntimeError(f"{n} could not join {g}: {r}")
            joined_at[(g, n)] = sim.now
    t_join = sim.now
    spread_s = sim.run_while(lambda s: not _spread(s, members), spread_limit_s, step_s=0.25)
    spread_ok = _spread(sim, members)
    sizes = [len(members[g]) for g in gnames]
    say(f"groups={n_groups} sizes min/mean/max {min(sizes)}/{sum(sizes) / len(sizes):.1f}/{max(sizes)} "
        f"spread_s={spread_s} ok={spread_ok} cpu_s={time.process_time() - cpu0:.1f}")

    # 1. Shouts one at a time on the quiet network: copies per shout.
    idle_copies, idle_ratio, idle_all = [], [], []
    for i in range(idle_shouts):
        g = rng.choice(gnames)
        frm = rng.choice(sorted(members[g]))
        before = sim.copies()
        mid = sim.shout(frm, g, f"idle {i}")
        if mid is None:
            continue
        to = sim.shouts[mid]["to"]
        sim.run_while(lambda s: any(s.got[(n, mid)] < 1 for n in to), 10.0, step_s=0.05)
        sim.run_until(sim.now + 0.5)
        copies = sim.copies() - before
        idle_copies.append(copies)
        idle_ratio.append(copies / max(1, len(to)))
        if all(sim.got[(n, mid)] >= 1 for n in to):
            idle_all.append(max(sim.first_at[(n, mid)] for n in to) - sim.shouts[mid]["t"])
    say(f"idle shouts: copies {idle_copies} per member {_stats(idle_ratio)} cpu_s={time.process_time() - cpu0:.1f}")

    # 2. The workload with churn.
    t0 = sim.now
    crashed_ever: set[str] = set()
    victims = rng.sample(names, int(nodes * churn))
    for v in victims:
        down_at = t0 + seconds * rng.uniform(0.05, 0.6)
        up_at = down_at + seconds * rng.uniform(0.05, 0.35)
        sim.at(down_at, lambda s, v=v: (s.crash(v), crashed_ever.add(v)))
        sim.at(up_at, lambda s, v=v: s.restart(v))
    skipped = {"leave": 0, "join": 0, "shout": 0}

    def leave(s: GroupSim, g: str) -> None:
        cands = sorted(n for n in members[g] if s.by_name[n].up and len(members[g]) > 2)
        if not cands:
            skipped["leave"] += 1
            return
        n = s.rng.choice(cands)
        r = s.request(n, "leave", group=g)
        if not (r and r["ok"]):
            raise RuntimeError(f"{n} could not leave {g}: {r}")
        members[g].discard(n)
        left_at[(g, n)] = s.now

    def join(s: GroupSim, g: str) -> None:
        cands = [n for n in names if n not in ever[g] and s.by_name[n].up]  # never in it before: a clean history
        if not cands:
            skipped["join"] += 1
            return
        n = s.rng.choice(cands)
        r = s.request(n, "join", group=g)
        if not (r and r["ok"]):  # e.g. in MAX_GROUPS groups already
            skipped["join"] += 1
            return
        members[g].add(n)
        ever[g].add(n)
        joined_at[(g, n)] = s.now

    def shout(s: GroupSim, i: int) -> None:
        g = s.rng.choice(gnames)
        cands = sorted(n for n in members[g] if s.by_name[n].up and s.by_name[n].frozen_until <= s.now)
        if not cands:
            skipped["shout"] += 1
            return
        s.shout(s.rng.choice(cands), g, f"shout {i}")

    for i in range(moves):
        g = rng.choice(gnames)
        sim.at(t0 + seconds * rng.uniform(0.05, 0.9), leave, g)
        sim.at(t0 + seconds * rng.uniform(0.05, 0.9), join, rng.choice(gnames))
    for i in range(n_shouts):
        sim.at(t0 + seconds * rng.random(), shout, i)
    step = max(1.0, seconds / 6)
    while sim.now < t0 + seconds:  # in steps, so that a long run says how far it got
        sim.run_until(min(t0 + seconds, sim.now + step))
        say(f"workload at {sim.now - t0:.0f}/{seconds:.0f} s: shouts={len(sim.shouts) - len(idle_copies)} "
            f"crashed so far={len(crashed_ever)} cpu_s={time.process_time() - cpu0:.1f}")
    say(f"workload done: shouts={len(sim.shouts) - len(idle_copies)} crashed={len(crashed_ever)} "
        f"cpu_s={time.process_time() - cpu0:.1f}")

    # 3. Heal: everyone back, the outboxes drain.
    for s in sim.nodes:
        if not s.up:
            sim.restart(s.name)

    def expected(mid: str, d: dict) -> list[str]:  # addressed and still in the group
        return [n for n in d["to"] if n in members[d["group"]]]

    def pending(s: GroupSim) -> bool:
        return any(s.got[(n, mid)] < 1 for mid, d in s.shouts.items() for n in expected(mid, d))

    drain_s = sim.run_while(pending, drain_limit_s, step_s=1.0)
    drained = not pending(sim)
    sim.run_until(sim.now + 5.0)  # a while longer: duplicates would show
    say(f"drained={drained} drain_s={drain_s} cpu_s={time.process_time() - cpu0:.1f}")
    t_end = sim.now

    # 4. The checks.
    missing = duplicates = unaddressed = left_stored = not_addressed = late_joiners = excluded = 0
    examples: list[str] = []
    churn_all, churn_each = [], []
    for mid, d in sim.shouts.items():
        g, t, to, origin = d["group"], d["t"], d["to"], d["origin"]
        for n in names:
            if n == origin:
                continue
            c = sim.got[(n, mid)]
            duplicates += max(0, c - 1)
            if c and n not in to:
                unaddressed += 1
                examples.append(f"{n} stored {mid} of {g} unaddressed")
            if (g, n) in left_at and left_at[(g, n)] <= t and c:
                left_stored += 1
                examples.append(f"{n} stored {mid} of {g} after leaving")
            stable = n in members[g] and joined_at[(g, n)] <= t
            if not stable:
                if (g, n) in left_at and left_at[(g, n)] > t and c == 0:
                    excluded += 1  # left while it was in flight, unstored: allowed (see the top)
                continue
            if n not in to:
                if t - joined_at[(g, n)] < JOIN_GRACE_S:
                    late_joiners += 1  # its record had not reached the origin yet
                else:
                    not_addressed += 1
                    examples.append(f"{n} (in {g} since {joined_at[(g, n)]:.1f}) not addressed by {origin} at {t:.1f}")
                continue
            if c == 0:
                missing += 1
                examples.append(f"{n} never stored {mid} of {g} from {origin} at {t:.1f}")
        got_at = [sim.first_at[(n, mid)] - t for n in expected(mid, d) if (n, mid) in sim.first_at]
        if d["t"] >= t0:
            churn_each += got_at
            if got_at and len(got_at) == len(expected(mid, d)):
                churn_all.append(max(got_at))
    # Per origin, in the order sent: each node's stored shouts of a group.
    order = {mid: d["n"] for mid, d in sim.shouts.items()}
    out_of_order = 0
    for s in sim.nodes:
        rows = s.store.history(group=None, direction="in")
        last: dict[tuple, int] = {}
        for r in rows:
            k = order.get(r["id"])
            if k is None:
                continue
            key = (r.get("group"), r["sender_id"])
            if last.get(key, -1) > k:
                out_of_order += 1
                examples.append(f"{s.name}: {r['id']} from {r['sender_id']} stored out of order")
            last[key] = max(last.get(key, -1), k)
    ok = drained and formed and spread_ok and not (missing or duplicates or unaddressed or left_stored or not_addressed
                                                   or out_of_order)
    node_stats = [s.node.stats for s in sim.nodes]
    return {
        "nodes": nodes, "seed": seed, "scenario": "groups", "groups": n_groups, "formed": formed, "warmup_s": round(warmup, 3),
        "formed_cpu_s": round(formed_cpu, 3),
        "sizes": {"min": min(sizes), "mean": round(sum(sizes) / len(sizes), 2), "max": max(sizes)},
        "memberships": sum(sizes), "spread_s": round(spread_s, 3) if spread_ok else None,
        "idle_shouts": len(idle_copies), "idle_copies": idle_copies, "idle_copies_per_member": _stats(idle_ratio),
        "idle_all_stored_s": {"p50": _pct(idle_all, 0.5), "p99": _pct(idle_all, 0.99)},
        "churn_shouts": sum(1 for d in sim.shouts.values() if d["t"] >= t0), "crashed": len(crashed_ever),
        "left": len(left_at), "joined_late": sum(1 for (g, n), tj in joined_at.items() if tj > t_join), "skipped": skipped,
        "churn_stored_s": {"p50": _pct(churn_each, 0.5), "p99": _pct(churn_each, 0.99)},
        "churn_all_stored_s": {"p50": _pct(churn_all, 0.5), "p99": _pct(churn_all, 0.99)},
        "drained": drained, "drain_s": round(drain_s, 3),
        "deliveries": sum(1 for (n, mid), c in sim.got.items() if mid in sim.shouts and c),
        "missing": missing, "duplicates": duplicates, "unaddressed_stored": unaddressed, "left_stored": left_stored,
        "not_addressed": not_addressed, "late_joiners": late_joiners, "left_in_flight_excluded": excluded,
        "out_of_order": out_of_order, "examples": examples[:10],
        "shout_copies_out": sum(st["shout_copies_out"] for st in node_stats),  # since each node's last start
        "shouts_relayed": sum(st["shouts_relayed"] for st in node_stats),
        "shouts_not_member": sum(st["shouts_not_member"] for st in node_stats),
        "shout_unreachable": sum(st["shout_unreachable"] for st in node_stats),
        "shout_loops": sum(st["shout_loops"] for st in node_stats),
        "exactly_once": ok, "refused": dict(sim.refused), "frames": sim.frames, "turns": sim.turns,
        "sim_end_s": round(t_end, 3), "wall_s": round(time.perf_counter() - wall0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "digest": sim.digest,
    }


def table(r: dict) -> str:
    """The report as a table, for people (``python -m bench.sim --scenario groups``)."""
    def mmm(d):
        return " / ".join(str(d.get(k)) for k in ("min", "median", "max")) if d else "-"

    def pp(d):
        return f"{d['p50']} / {d['p99']}"

    rows = [
        ("nodes, groups", f"{r['nodes']}, {r['groups']} (sizes min/mean/max {r['sizes']['min']}/{r['sizes']['mean']}/"
                          f"{r['sizes']['max']}, {r['memberships']} memberships)"),
        ("overlay formed", f"{r['formed']} in {r['warmup_s']} s simulated, {r['formed_cpu_s']} CPU s"),
        ("directories spread", f"{r['spread_s']} s" if r["spread_s"] is not None else "NOT within the limit"),
        ("idle: SHOUT copies", f"{r['idle_copies']}"),
        ("idle: copies / members", f"min / median / max {mmm(r['idle_copies_per_member'])}"),
        ("idle: all stored, s", f"p50 / p99 {pp(r['idle_all_stored_s'])}"),
        ("churn", f"{r['churn_shouts']} shouts, {r['crashed']} crashed and restarted, {r['left']} left a group, "
                  f"{r['joined_late']} joined one; skipped {r['skipped']}"),
        ("churn: each stored, s", f"p50 / p99 {pp(r['churn_stored_s'])}"),
        ("churn: all stored, s", f"p50 / p99 {pp(r['churn_all_stored_s'])}"),
        ("drained", f"{r['drained']} after {r['drain_s']} s"),
        ("deliveries", r["deliveries"]),
        ("missing / duplicates", f"{r['missing']} / {r['duplicates']}"),
        ("stored unaddressed", r["unaddressed_stored"]),
        ("stored after leaving", r["left_stored"]),
        ("members not addressed", f"{r['not_addressed']} (+{r['late_joiners']} joined < {JOIN_GRACE_S:.0f} s before)"),
        ("left in flight (excl.)", r["left_in_flight_excluded"]),
        ("out of order", r["out_of_order"]),
        ("counters", f"copies {r['shout_copies_out']}, relayed {r['shouts_relayed']}, not member {r['shouts_not_member']}, "
                     f"unreachable {r['shout_unreachable']}, loops {r['shout_loops']}"),
        ("exactly once", r["exactly_once"]),
        ("cost", f"{r['cpu_s']} CPU s, {r['wall_s']} wall s, peak RSS {r['max_rss_mb']} MB, {r['frames']} frames, "
                 f"sim end {r['sim_end_s']} s"),
        ("digest", r["digest"]),
    ]
    lines = [f"{k:26} {v}" for k, v in rows]
    lines += [f"  {e}" for e in r["examples"]]
    return "\n".join(lines)
