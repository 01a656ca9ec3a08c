KIND := program
LDLIBS := -lws2_32
