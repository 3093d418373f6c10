"""The main job, ``agentrl run``: one machine runs Redis, MongoDB, the engine, Celery workers and
beat, and the trainer (:func:`~agentrl.driver.main_job.run_main_job`)."""
