"""API B surface (``project.hessian`` → ``hessext.hessian``); the API A modules live beside it."""
