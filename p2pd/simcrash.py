"""The issue-15 scale scenario in the simulator: half the nodes crash at once (docs/SIMULATOR.md).

How this works
--------------
`run_mass_crash` forms the overlay through a few seeds (`sim.form`), measures the idle
upkeep (`idle_rate`: envelopes each node sends per simulated second), crashes a share of the
nodes at one instant, waits until every survivor marks every crashed node not alive and routes
to every other survivor, then sends broadcasts and counts who delivered each exactly once.
Same seed, same report and digest.
"""

from __future__ import annotations

import random
import time

from p2pd.settings import Settings
from p2pd.sim import Sim, few_collections, form


def idle_rate(sim: Sim, seconds: float) -> dict:
    """Run ``seconds`` with no workload; envelopes sent per running node per simulated second
    (mean and the busiest node's): the overlay's upkeep (heartbeats, shuffles, news)."""
    live = [s.index for s in sim.nodes if s.up]
    before = list(sim.sent)
    sim.run_until(sim.now + seconds)
    per = [(sim.sent[i] - before[i]) / seconds for i in live]
    return {"mean": round(sum(per) / max(1, len(per)), 3), "max": round(max(per, default=0.0), 3)}


def links_of(sim: Sim, names) -> list[int]:
    """How many live links to its active view each of ``names`` holds: the links a node keeps.
    Not counted: a link dialled to ask a node to be a neighbour while the view filled up
    meanwhile (HyParView), or one being closed; they last until the answer or the close."""
    counts = []
    for n in names:
        node = sim.by_name[n].node
        active = node.overlay.views.active
        counts.append(sum(1 for p in node.table.alive() if p.id in active))
    return counts


def run_mass_crash(nodes: int, seed: int = 1, seeds: int = 3, idle_s: float = 10.0, broadcasts: int = 5,
                   warmup_limit_s: float = 300.0, repair_limit_s: float = 120.0, settle_limit_s: float = 60.0,
                   settings: Settings | None = None, share: float = 0.5, progress=None) -> dict:
    """The issue's scale scenario: ``nodes`` join through ``seeds`` seeds; once the overlay has
    formed, the idle frames per node per second over ``idle_s``; then ``share`` of the nodes
    (seeded choice) crash at once and stay down; the survivors repair (every survivor's roster
    marks every crashed node not alive: ``roster_s``; every survivor routes to every other:
    ``repair_s``); then ``broadcasts`` broadcasts from survivors, and the share of survivors
    that delivered each exactly once.  ``progress(text)``, if given, hears each step's figures
    as they come (a long run that is cut short still says how far it got)."""
    say = progress or (lambda text: None)
    with few_collections():
        wall0, cpu0 = time.perf_counter(), time.process_time()
        sim = Sim(nodes, seed, settings=settings, seeds=seeds)
        warmup, formed, formed_cpu = form(sim, warmup_limit_s, cpu0)
        links_formed = links_of(sim, [s.name for s in sim.nodes])
        say(f"formed={formed} warmup_s={warmup} cpu_s={formed_cpu:.1f} links min/mean/max {min(links_formed)}/"
            f"{sum(links_formed) / nodes:.2f}/{max(links_formed)}")
        idle = idle_rate(sim, idle_s)
        say(f"idle frames per node per s {idle} cpu_s={time.process_time() - cpu0:.1f}")
        rng = random.Random(f"faults:{seed}")
        victims = set(rng.sample([s.name for s in sim.nodes], int(nodes * share)))
        survivors = [s for s in sim.nodes if s.name not in victims]
        victim_ids = [sim.by_name[v].id for v in sorted(victims)]
        for v in sorted(victims):
            sim.crash(v)

        def marked(sim):  # every survivor's roster holds every crashed node not alive
            return all(s.node.roster.state_of(v) != "alive" for s in survivors for v in victim_ids)

        def routed(sim):  # every survivor has a route to every other
            return all(s.node.routes.hops(o.id) is not None for s in survivors for o in survivors if o is not s)

        roster_s = sim.run_while(lambda s: not marked(s), repair_limit_s)
        roster_ok = marked(sim)
        repair_s = roster_s + sim.run_while(lambda s: not routed(s), repair_limit_s - roster_s)
        repaired = roster_ok and routed(sim)
        say(f"roster_s={roster_s} ok={roster_ok} repair_s={repair_s} repaired={repaired} cpu_s={time.process_time() - cpu0:.1f}")
        idle_after = idle_rate(sim, idle_s)
        names = [s.name for s in survivors]
        links = links_of(sim, names)
        mids = []
        for i in range(broadcasts):
            mid = sim.broadcast(rng.choice(names), f"after-crash {i}")
            if mid is not None:
                mids.append(mid)

        def pending(sim):
            return any(sim.got[(n, mid)] < 1 for mid in mids for n in names if n != sim.broadcasts[mid])

        settle = sim.run_while(pending, settle_limit_s)
        sim.run_until(sim.now + 5.0)  # a while longer: duplicates would show
        reached = []
        for mid in mids:
            others = [n for n in names if n != sim.broadcasts[mid]]
            reached.append(sum(1 for n in others if sim.got[(n, mid)] == 1) / len(others))
        return {
            "nodes": nodes, "seed": seed, "scenario": "mass-crash", "seeds": seeds, "formed": formed,
            "warmup_s": round(warmup, 3), "formed_cpu_s": round(formed_cpu, 3),
            "links_formed": {"min": min(links_formed), "mean": round(sum(links_formed) / nodes, 2), "max": max(links_formed)},
            "idle_frames_per_node_s": idle,
            "crashed": len(victims), "survivors": len(survivors),
            "roster_s": round(roster_s, 3) if roster_ok else None, "repair_s": round(repair_s, 3) if repaired else None,
            "idle_after_frames_per_node_s": idle_after,
            "links_survivors": {"min": min(links), "mean": round(sum(links) / len(links), 2), "max": max(links)},
            "broadcasts_sent": len(mids), "broadcast_reach": [round(r, 4) for r in reached],
            "broadcast_duplicates": sum(max(0, sim.got[(n, mid)] - 1) for mid in mids for n in names),
            "exactly_once": len(mids) == broadcasts and all(r == 1.0 for r in reached),
            "settle_s": round(settle, 3), "frames": sim.frames, "lost_messages": sim.lost, "turns": sim.turns,
            "sim_end_s": round(sim.now, 3), "wall_s": round(time.perf_counter() - wall0, 3),
            "cpu_s": round(time.process_time() - cpu0, 3), "digest": sim.digest,
        }
