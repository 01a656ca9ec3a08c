KIND := program
LDLIBS := -pthread
