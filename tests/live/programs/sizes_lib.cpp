// A C++ shared library whose fix throws from the replaced function (and std::stoi throws through it):
// a package with unwind rules for an image that is not the main program.
#include <stdexcept>
#include <string>

int checked_size(const std::string& text) {
    int value = std::stoi(text);  // std::invalid_argument for "abc", through this function
#ifdef FIX
    if (value > 4096) throw std::length_error("over the limit");
#endif
    return value;
}
