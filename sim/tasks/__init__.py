"""One file per task; each defines an ``ArmEnv`` subclass and its scripted plan."""
