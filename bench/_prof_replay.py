import cProfile, pstats, time, sys
from pathlib import Path
from stream.replay import replay
from stream.rulesfile import load_rules
p = Path("../shared/data/taobao_userbehavior_2017-11-26.csv.gz")
rules = load_rules()
t=time.perf_counter(); r = replay(p, "taobao", rules); dt=time.perf_counter()-t
print(r.events, r.seconds, r.events/dt, len(r.signals), len(r.changes), len(r.actions), r.shoppers)
if len(sys.argv)>1:
    cProfile.run('replay(p, "taobao", rules)', '/tmp/replay.prof')
    s = pstats.Stats('/tmp/replay.prof'); s.sort_stats('tottime').print_stats(35)
