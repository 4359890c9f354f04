"""Peer for benches/api.rs: the seed's API service design in FastAPI, served
by uvicorn, running functions in a warm multiprocessing pool (2 workers) the
way the local backend runs warm containers.

Run by `cargo bench --bench api` when fastapi and uvicorn are importable:
    python3 benches/peer_fastapi.py PORT TOKEN
"""
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

app = FastAPI()
pool = None
functions = {}
tasks = {}
TOKEN = sys.argv[2] if len(sys.argv) > 2 else "token"

_loaded = {}


def _run(name, code, args, kwargs):
    fn = _loaded.get((name, code))
    if fn is None:
        ns = {}
        exec(compile(code, name, "exec"), ns)
        fn = _loaded[(name, code)] = ns[name]
    return fn(*args, **kwargs)


def check(authorization):
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(status_code=401)


class Deploy(BaseModel):
    function_code: str
    function_name: str


class Spawn(BaseModel):
    function_name: str
    args: list = []
    kwargs: dict = {}
    wait: bool = False


@app.post("/deploy-function")
async def deploy(req: Deploy, authorization: str = Header(None)):
    check(authorization)
    functions[req.function_name] = req.function_code
    return {"function_id": str(uuid.uuid4()), "function_name": req.function_name, "status": "registered"}


@app.post("/spawn-task")
async def spawn(req: Spawn, authorization: str = Header(None)):
    import asyncio

    check(authorization)
    code = functions.get(req.function_name)
    if code is None:
        raise HTTPException(status_code=404)
    task_id = str(uuid.uuid4())
    tasks[task_id] = {"task_id": task_id, "function_name": req.function_name, "status": "running", "result": None}
    fut = asyncio.get_running_loop().run_in_executor(pool, _run, req.function_name, code, req.args, req.kwargs)
    if req.wait:
        result = await fut
        tasks[task_id].update(status="completed", result=result)
    return tasks[task_id]


@app.get("/status/{task_id}")
async def status(task_id: str, authorization: str = Header(None)):
    check(authorization)
    if task_id not in tasks:
        raise HTTPException(status_code=404)
    return tasks[task_id]


if __name__ == "__main__":
    pool = ProcessPoolExecutor(2)
    pool.submit(int, 0).result()
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
