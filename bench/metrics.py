"""Continual-learning metrics, exactly as DESIGN §4. `A[i][j]` is the score (%) on task j after
training through task i; None where not evaluated. Every function returns None when the entries
it needs are missing (e.g. the multitask reference has only a last row)."""
from statistics import mean


def _last(A):
    return A[-1]


def final_avg(A):
    row = _last(A)
    return None if any(v is None for v in row) else mean(row)


def avg_incremental(A):
    rows = []
    for i, row in enumerate(A):
        seen = row[:i + 1]
        if any(v is None for v in seen):
            return None
        rows.append(mean(seen))
    return mean(rows)


def bwt(A):
    """Lopez-Paz & Ranzato 2017: 1/(T-1) sum_{j<T-1} (A[T-1][j] - A[j][j])."""
    T = len(A)
    if T < 2:
        return None
    diffs = [A[T - 1][j] - A[j][j] for j in range(T - 1) if A[T - 1][j] is not None and A[j][j] is not None]
    return mean(diffs) if len(diffs) == T - 1 else None


def forgetting(A):
    """Chaudhry et al. 2018: mean over j<T-1 of max_{i<T-1} A[i][j] - A[T-1][j]."""
    T = len(A)
    if T < 2:
        return None
    values = []
    for j in range(T - 1):
        seen = [A[i][j] for i in range(j, T - 1) if A[i][j] is not None]
        if not seen or A[T - 1][j] is None:
            return None
        values.append(max(seen) - A[T - 1][j])
    return mean(values)


def climb_forgetting(A, chance):
    """CLiMB normalised forgetting of each task j<T-1: 100 (A[j][j] - A[T-1][j]) / (A[j][j] - R_j)."""
    T = len(A)
    out = []
    for j in range(T - 1):
        a_jj, a_last = A[j][j], A[T - 1][j]
        if a_jj is None or a_last is None or a_jj == chance[j]:
            out.append(None)
        else:
            out.append(100.0 * (a_jj - a_last) / (a_jj - chance[j]))
    return out


def transfer(A, single_task, chance):
    """CLiMB knowledge transfer of each task: 100 (A[j][j] - S_j) / (S_j - R_j)."""
    out = []
    for j in range(len(A)):
        a_jj, s_j = A[j][j], single_task[j] if single_task else None
        if a_jj is None or s_j is None or s_j == chance[j]:
            out.append(None)
        else:
            out.append(100.0 * (a_jj - s_j) / (s_j - chance[j]))
    return out


def mean_defined(values, start=0):
    vals = [v for v in values[start:] if v is not None]
    return mean(vals) if vals else None


def summary(A, chance, single_task=None) -> dict:
    cf = climb_forgetting(A, chance)
    tr = transfer(A, single_task, chance)
    return {"final_avg": final_avg(A), "avg_incremental": avg_incremental(A), "bwt": bwt(A),
            "forgetting": forgetting(A), "climb_forgetting": cf, "climb_forgetting_mean": mean_defined(cf),
            "transfer": tr, "transfer_mean": mean_defined(tr, start=1)}
