KIND := library
LIB := libpct.so.1
LIB_SRCS := pct.c
HOST_SRCS := host.c
