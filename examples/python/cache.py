# A web-ish workload: parse records, keep an index of them, and cache rendered pages.
import json, functools

@functools.lru_cache(maxsize=None)
def render(n):
    return json.dumps({"id": n, "tags": ["tag-%d" % i for i in range(n % 40)]})

def load_rows(n):
    return [json.loads(render(i)) for i in range(n)]

def build_index(rows):
    return {r["id"]: r for r in rows}

rows = load_rows(60000)
index = build_index(rows)
print(len(index), sum(len(r["tags"]) for r in rows))
