"""What a run says it costs (siamese_reid.run_cost): the time of an epoch and the time left."""


def test_run_clock_projects_the_time_left_from_the_mean_epoch(monkeypatch, caplog):
    import logging

    from siamese_reid import run_cost

    caplog.set_level(logging.INFO, logger="siamese_reid")

    now = iter([100.0, 100.0, 160.0, 160.0, 300.0])  # epochs of 60 s and 140 s: a mean of 100 s
    monkeypatch.setattr(run_cost.time, "monotonic", lambda: next(now))
    clock = run_cost.RunClock(total_epochs=12)
    clock.on_train_begin()
    for epoch in (0, 1):
        clock.on_epoch_begin(epoch)
        clock.on_epoch_end(epoch)
    lines = [message for message in caplog.messages if message.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/12 took 60 s; about 11 min left")  # 11 epochs x 60 s
    assert lines[1].startswith("epoch 2/12 took 2 min; about 17 min left")  # 10 epochs x 100 s
    assert run_cost.format_duration(3900) == "1 h 05 min"


def test_a_resumed_run_costs_its_sessions_together_not_only_its_last(tmp_path, monkeypatch):
    # killed after 2 epochs (300 s, 40 s of them scoring), resumed hours later for 1 epoch of
    # 100 s (10 s scoring): the run cost 400 s, 50 s of them scoring; the pause is not training
    from types import SimpleNamespace

    from siamese_reid import run_cost

    now = [1000.0]
    monkeypatch.setattr(run_cost.time, "monotonic", lambda: now[0])
    memory = [1.5]
    monkeypatch.setattr(run_cost, "peak_memory_gib", lambda: memory[0])

    scoring = SimpleNamespace(seconds=0.0)
    first = run_cost.RunCostMeter(tmp_path / "run_cost.json", scoring)
    first.on_train_begin()
    now[0], scoring.seconds = 1150.0, 20.0
    first.on_epoch_end(0)
    now[0], scoring.seconds = 1300.0, 40.0
    first.on_epoch_end(1)  # then kill -9: nothing more of this session is written

    now[0], memory[0] = 9000.0, 0.75  # hours later, in a new process
    scoring = SimpleNamespace(seconds=0.0)
    second = run_cost.RunCostMeter(tmp_path / "run_cost.json", scoring, run_cost.cost_so_far(tmp_path))
    second.on_train_begin()
    now[0], scoring.seconds = 9100.0, 10.0
    second.on_epoch_end(2)
    expected = {"training_seconds": 400.0, "periodic_evaluation_seconds": 50.0, "peak_memory_gib": 1.5}
    assert second.cost() == expected
    assert run_cost.cost_so_far(tmp_path) == expected
    assert second.session_seconds() == 100.0


def test_a_run_folder_without_its_cost_takes_the_training_time_from_its_history(tmp_path, caplog):
    # a run folder of an older version: history.csv's last elapsed_seconds is its training time
    import logging

    from siamese_reid import run_cost

    assert run_cost.cost_so_far(tmp_path) == {}  # a new run
    (tmp_path / "history.csv").write_text("epoch,elapsed_seconds,loss\n1,70.5,0.9\n2,141.0,0.8\n")
    with caplog.at_level(logging.WARNING, logger="siamese_reid"):
        assert run_cost.cost_so_far(tmp_path) == {"training_seconds": 141.0}
    assert "cover this session only" in caplog.text
