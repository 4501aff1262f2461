"""Which model is loaded where, and one request's life: scheduler, worker, runner isolation, text
stream and generation."""
