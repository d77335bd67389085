"""Time: schedules, the scheduler daemon and run claims."""
