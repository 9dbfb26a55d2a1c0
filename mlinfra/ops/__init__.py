"""Operations over a deployed stack: rebuild (destroy → up → verify, timed), heal (replace failing nodes), preflight (`mlinfra check`)."""
