/*
 * A C++ request router: the first word of a request picks a Handler, whose virtual process()
 * answers it; any std::exception becomes "error: ...".
 * The bug (no size limit, CWE-400): Upload::process() accepts uploads of any size.  The fix
 * throws std::length_error above 4096 bytes.  Both builds also throw through Upload::process():
 * parse_size() throws std::invalid_argument for a non-number, and the exception unwinds through
 * the (patched) method to the catch in handle().  Upload keeps a running total (state).
 */
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "sample.h"

namespace {

constexpr unsigned long upload_limit = 4096;

}  // namespace

class Handler {
public:
    virtual ~Handler() = default;
    virtual std::string process(const std::string &arg) = 0;
};

/* Parse a byte count; throws std::invalid_argument when arg is not a plain decimal number. */
unsigned long parse_size(const std::string &arg)
{
    if (arg.empty() || arg.size() > 12 || arg.find_first_not_of("0123456789") != std::string::npos)
        throw std::invalid_argument("not a size: '" + arg + "'");
    return std::stoul(arg);
}

class Upload : public Handler {
public:
    std::string process(const std::string &arg) override;

private:
    unsigned long total_ = 0;
};

std::string Upload::process(const std::string &arg)
{
    unsigned long size = parse_size(arg);

#ifdef FIX
    if (size > upload_limit)
        throw std::length_error("upload of " + std::to_string(size) + " bytes is over the limit");
#endif
    total_ += size;
    return "stored " + std::to_string(size) + " bytes, " + std::to_string(total_) + " in total";
}

class Echo : public Handler {
public:
    std::string process(const std::string &arg) override { return arg; }
};

class Length : public Handler {
public:
    std::string process(const std::string &arg) override { return std::to_string(arg.size()); }
};

static std::map<std::string, std::unique_ptr<Handler>> make_routes()
{
    std::map<std::string, std::unique_ptr<Handler>> routes;

    routes["upload"] = std::make_unique<Upload>();
    routes["echo"] = std::make_unique<Echo>();
    routes["length"] = std::make_unique<Length>();
    return routes;
}

static std::map<std::string, std::unique_ptr<Handler>> routes = make_routes();

extern "C" void handle(const char *request, char *answer, size_t size)
{
    std::string line(request);
    std::string::size_type space = line.find(' ');
    std::string verb = line.substr(0, space);
    std::string arg = space == std::string::npos ? std::string() : line.substr(space + 1);

    try {
        auto route = routes.find(verb);
        if (route == routes.end())
            throw std::runtime_error("unknown request");
        std::snprintf(answer, size, "%s", route->second->process(arg).c_str());
    } catch (const std::exception &error) {
        std::snprintf(answer, size, "error: %s", error.what());
    }
}
