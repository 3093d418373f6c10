"""Flower settings for agentrl (a Flower ``--conf`` file: module globals are Flower options).

Use it with::

    CONF=$(python -c 'import agentrl.flowerconfig as c; print(c.__file__)')
    celery -A agentrl flower --conf="$CONF" --basic-auth="$FLOWER_USER:$FLOWER_PASSWORD"

or set the same options as ``FLOWER_<OPTION>`` environment variables (``FLOWER_TASKS_COLUMNS``).
The tasks page then shows each job's kwargs next to its name: a sampling job
(``agentrl.sample``) shows its claim — ``task_id``, ``traj_id``, ``epoch``, ``split``,
``sampler``, ``model``, ``resample`` (an evaluation's trajectories are claims of its tasks) —,
and an evaluation job (``agentrl.evaluate``, its uuid is the evaluation id) its sampler, dataset,
model and split. Basic auth is documented in ``docs/flower.md``; never
leave Flower open without it (it can revoke and terminate tasks).
"""

tasks_columns = "name,uuid,state,kwargs,received,started,runtime,worker"
"""Columns of Flower's tasks page: the job's kwargs are its readable arguments."""

purge_offline_workers = 3600
"""Seconds after which offline workers leave the dashboard (sampling nodes come and go)."""
