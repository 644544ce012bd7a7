"""HTTP: FastAPI routers, dependencies and the error table."""
