SRCS := 12-global-initializer/sample.c
