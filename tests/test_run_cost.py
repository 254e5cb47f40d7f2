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
