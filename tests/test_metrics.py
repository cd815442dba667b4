"""Metrics against matrices computed by hand (DESIGN §4)."""
import pytest

from bench import metrics

# A[i][j]: score on task j after training through task i (T = 3)
A = [[80.0, None, None],
     [60.0, 90.0, None],
     [50.0, 70.0, 40.0]]
CHANCE = [20.0, 50.0, 10.0]
SINGLE = [85.0, 80.0, 50.0]


def test_final_and_incremental_average():
    assert metrics.final_avg(A) == pytest.approx((50 + 70 + 40) / 3)
    # rows: 80 ; (60+90)/2=75 ; (50+70+40)/3=53.333
    assert metrics.avg_incremental(A) == pytest.approx((80 + 75 + 160 / 3) / 3)


def test_bwt_lopez_paz():
    # 1/2 * ((50-80) + (70-90)) = -25
    assert metrics.bwt(A) == pytest.approx(-25.0)


def test_forgetting_uses_max_over_earlier_rows():
    B = [[60.0, None, None], [80.0, 90.0, None], [50.0, 70.0, 40.0]]
    # task 0: max(60, 80) - 50 = 30 ; task 1: 90 - 70 = 20 -> 25
    assert metrics.forgetting(B) == pytest.approx(25.0)
    assert metrics.bwt(B) == pytest.approx(((50 - 60) + (70 - 90)) / 2)


def test_climb_normalised_forgetting():
    # task 0: 100*(80-50)/(80-20) = 50 ; task 1: 100*(90-70)/(90-50) = 50
    assert metrics.climb_forgetting(A, CHANCE) == pytest.approx([50.0, 50.0])


def test_climb_knowledge_transfer():
    # 100*(A_jj - S_j)/(S_j - R_j): (80-85)/65, (90-80)/30, (40-50)/40
    expected = [100 * -5 / 65, 100 * 10 / 30, 100 * -10 / 40]
    assert metrics.transfer(A, SINGLE, CHANCE) == pytest.approx(expected)
    s = metrics.summary(A, CHANCE, SINGLE)
    assert s["transfer_mean"] == pytest.approx((expected[1] + expected[2]) / 2)  # mean over j >= 1


def test_missing_entries_give_none_not_wrong_numbers():
    last_only = [[None, None], [70.0, 60.0]]  # multitask reference fills only the last row
    assert metrics.final_avg(last_only) == pytest.approx(65.0)
    assert metrics.bwt(last_only) is None and metrics.forgetting(last_only) is None
    assert metrics.avg_incremental(last_only) is None
    assert metrics.transfer(last_only, None, [0, 0]) == [None, None]


def test_climb_forgetting_mean_averages_every_earlier_task():
    A2 = [[80.0, None, None], [60.0, 90.0, None], [50.0, 60.0, 40.0]]
    # task 0: 100*(80-50)/(80-20) = 50 ; task 1: 100*(90-60)/(90-50) = 75 ; the last task cannot forget
    s = metrics.summary(A2, CHANCE)
    assert s["climb_forgetting"] == pytest.approx([50.0, 75.0])
    assert s["climb_forgetting_mean"] == pytest.approx(62.5)
