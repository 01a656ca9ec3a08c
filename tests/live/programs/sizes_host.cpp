// Reads sizes, one a line, and answers each through libsizes.so's checked_size (or the error).
#include <exception>
#include <iostream>
#include <string>

int checked_size(const std::string& text);

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        try {
            int size = checked_size(line);
            std::cout << "size " << size << std::endl;
        } catch (const std::exception& error) {
            std::cout << "error: " << error.what() << std::endl;
        }
    }
    return 0;
}
