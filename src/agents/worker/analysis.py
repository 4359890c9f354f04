# The built-in `analysis` agent task: statistics of a text or of a list of
# numbers. Deployed as function `agent_analysis` (src/agents/worker.rs).
import re, statistics
from collections import Counter

def agent_analysis(data):
    if not isinstance(data, dict):
        raise TypeError("analysis data must be an object with 'text' or 'values'")
    if "text" in data:
        text = str(data["text"])
        words = re.findall(r"[A-Za-z0-9']+", text.lower())
        sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
        return {
            "kind": "text",
            "words": len(words),
            "unique_words": len(set(words)),
            "sentences": len(sentences),
            "mean_word_length": round(sum(map(len, words)) / len(words), 3) if words else 0,
            "top_words": [w for w, _ in Counter(words).most_common(5)],
        }
    if "values" in data:
        values = [float(v) for v in data["values"]]
        if not values:
            raise ValueError("analysis of an empty 'values' list")
        return {
            "kind": "values",
            "count": len(values),
            "mean": round(statistics.fmean(values), 6),
            "stdev": round(statistics.pstdev(values), 6),
            "min": min(values),
            "max": max(values),
            "median": statistics.median(values),
        }
    raise ValueError("analysis data needs 'text' or 'values', got keys %s" % sorted(data))
