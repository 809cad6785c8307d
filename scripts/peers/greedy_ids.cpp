// greedy_ids: reference token ids and log-probabilities from llama.cpp, for moestream's GGUF
// tests (scripts/peers/gguf_reference.sh writes fixtures/gguf/ with it).
//
//   greedy_ids -m MODEL.gguf (-p TEXT | -f FILE) [-n N] [-t THREADS] [--stop-at-eog]
//              [--no-bos] [--no-parse-special] [--no-repack] [-v]
//
// Loads MODEL on the CPU, tokenizes the prompt (TEXT, or FILE's bytes exactly as they are;
// BOS added when the vocabulary asks for it unless --no-bos, special tokens such as
// <|im_start|> parsed unless --no-parse-special), then decodes greedily for N tokens (default
// 64): at each step the full-vocabulary logits are turned into log-softmax, the arg-max
// (lowest id on a tie) is the next token. It does not stop at an end-of-generation token
// unless --stop-at-eog. Prints one JSON object on stdout:
//
//   {"add_bos": bool, "n_vocab": V, "prompt_ids": [...], "ids": [...],
//    "top5": [[[id, logprob] x5] per step], "text": "detokenized ids"}
//
// top5[i] belongs to the step that produced ids[i]. With -n 0 only the weights' vocabulary is
// loaded and the tool just tokenizes (ids and top5 empty). llama.cpp's own log goes to stderr
// with -v and is dropped otherwise.

#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static bool g_verbose = false;

static void log_cb(enum ggml_log_level, const char * text, void *) {
    if (g_verbose) {
        fputs(text, stderr);
    }
}

static void usage(const char * argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf (-p TEXT | -f FILE) [-n N] [-t THREADS] [--stop-at-eog]\n"
            "          [--no-bos] [--no-parse-special] [--no-repack] [-v]\n",
            argv0);
    exit(2);
}

// JSON string literal for bytes that are normally UTF-8: control characters and the two
// JSON metacharacters escaped; a byte that is not part of valid UTF-8 (a detokenized piece
// can end inside a multi-byte character) becomes U+FFFD.
static std::string json_str(const std::string & s) {
    std::string out = "\"";
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"' || c == '\\') {
            out += '\\';
            out += (char) c;
            i++;
        } else if (c < 0x20) {
            char buf[8];
            snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
            i++;
        } else if (c < 0x80) {
            out += (char) c;
            i++;
        } else {
            size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
            bool ok = len > 0 && i + len <= s.size();
            for (size_t k = 1; ok && k < len; k++) {
                ok = ((unsigned char) s[i + k] >> 6) == 0x2;
            }
            if (ok) {
                out.append(s, i, len);
                i += len;
            } else {
                out += "\xEF\xBF\xBD";
                i++;
            }
        }
    }
    out += '"';
    return out;
}

static void print_ids(const std::vector<llama_token> & ids) {
    putchar('[');
    for (size_t i = 0; i < ids.size(); i++) {
        printf(i ? ", %d" : "%d", ids[i]);
    }
    putchar(']');
}

int main(int argc, char ** argv) {
    std::string model_path;
    std::string prompt;
    bool have_prompt = false;
    int n_gen = 64;
    int n_threads = 2;
    bool stop_at_eog = false;
    bool no_bos = false;
    bool parse_special = true;
    bool repack = true;

    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> const char * {
            if (i + 1 >= argc) {
                usage(argv[0]);
            }
            return argv[++i];
        };
        if (a == "-m") {
            model_path = next();
        } else if (a == "-p") {
            prompt = next();
            have_prompt = true;
        } else if (a == "-f") {
            const char * path = next();
            std::ifstream in(path, std::ios::binary);
            if (!in) {
                fprintf(stderr, "cannot read %s\n", path);
                return 1;
            }
            std::stringstream ss;
            ss << in.rdbuf();
            prompt = ss.str();
            have_prompt = true;
        } else if (a == "-n") {
            n_gen = atoi(next());
        } else if (a == "-t") {
            n_threads = atoi(next());
        } else if (a == "--stop-at-eog") {
            stop_at_eog = true;
        } else if (a == "--no-bos") {
            no_bos = true;
        } else if (a == "--no-parse-special") {
            parse_special = false;
        } else if (a == "--no-repack") {
            repack = false;
        } else if (a == "-v") {
            g_verbose = true;
        } else {
            usage(argv[0]);
        }
    }
    if (model_path.empty() || !have_prompt || n_gen < 0 || n_threads < 1) {
        usage(argv[0]);
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    mparams.vocab_only = n_gen == 0;
    mparams.use_extra_bufts = repack;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const bool add_bos = llama_vocab_get_add_bos(vocab) && !no_bos;

    // Tokenize: the first call reports the size (negated) when the buffer is too small.
    // add_special=true adds BOS (and EOS) exactly where the vocabulary says to.
    const bool add_special = !no_bos;
    std::vector<llama_token> prompt_ids(prompt.size() + 8);
    int n = llama_tokenize(vocab, prompt.data(), (int32_t) prompt.size(), prompt_ids.data(),
                           (int32_t) prompt_ids.size(), add_special, parse_special);
    if (n < 0) {
        prompt_ids.resize(-n);
        n = llama_tokenize(vocab, prompt.data(), (int32_t) prompt.size(), prompt_ids.data(),
                           (int32_t) prompt_ids.size(), add_special, parse_special);
    }
    if (n < 0) {
        fprintf(stderr, "tokenization failed\n");
        return 1;
    }
    prompt_ids.resize(n);

    std::vector<llama_token> ids;
    std::vector<std::vector<std::pair<llama_token, double>>> top5;

    if (n_gen > 0) {
        if (prompt_ids.empty()) {
            fprintf(stderr, "the prompt has no tokens\n");
            return 1;
        }
        llama_context_params cparams = llama_context_default_params();
        const uint32_t n_ctx = (uint32_t) (prompt_ids.size() + n_gen + 16);
        cparams.n_ctx = n_ctx;
        cparams.n_batch = n_ctx;  // the whole prompt goes in one llama_decode
        cparams.n_threads = n_threads;
        cparams.n_threads_batch = n_threads;
        cparams.no_perf = true;
        llama_context * ctx = llama_init_from_model(model, cparams);
        if (!ctx) {
            fprintf(stderr, "cannot create a context\n");
            return 1;
        }

        std::vector<llama_token> pending = prompt_ids;
        std::vector<double> lp(n_vocab);
        std::vector<int> order(n_vocab);
        for (int step = 0; step < n_gen; step++) {
            // llama_batch_get_one asks for the logits of the batch's last token only.
            llama_batch batch = llama_batch_get_one(pending.data(), (int32_t) pending.size());
            if (llama_decode(ctx, batch) != 0) {
                fprintf(stderr, "llama_decode failed at step %d\n", step);
                return 1;
            }
            const float * logits = llama_get_logits_ith(ctx, -1);
            double mx = -INFINITY;
            for (int v = 0; v < n_vocab; v++) {
                mx = std::max(mx, (double) logits[v]);
            }
            double sum = 0.0;
            for (int v = 0; v < n_vocab; v++) {
                sum += std::exp((double) logits[v] - mx);
            }
            const double lse = mx + std::log(sum);
            for (int v = 0; v < n_vocab; v++) {
                lp[v] = (double) logits[v] - lse;
                order[v] = v;
            }
            // Highest first, lowest id first among equals: order[0] is the greedy choice.
            std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int a, int b) {
                return lp[a] > lp[b] || (lp[a] == lp[b] && a < b);
            });
            std::vector<std::pair<llama_token, double>> top;
            for (int k = 0; k < 5; k++) {
                top.emplace_back(order[k], lp[order[k]]);
            }
            top5.push_back(top);
            const llama_token next = order[0];
            ids.push_back(next);
            if (stop_at_eog && llama_vocab_is_eog(vocab, next)) {
                break;
            }
            pending.assign(1, next);
        }
        llama_free(ctx);
    }

    // The continuation as text (special tokens not rendered, as llama-completion prints it).
    std::string text;
    if (!ids.empty()) {
        std::vector<char> buf(ids.size() * 16 + 64);
        int32_t len = llama_detokenize(vocab, ids.data(), (int32_t) ids.size(), buf.data(),
                                       (int32_t) buf.size(), false, false);
        if (len < 0) {
            buf.resize(-len);
            len = llama_detokenize(vocab, ids.data(), (int32_t) ids.size(), buf.data(),
                                   (int32_t) buf.size(), false, false);
        }
        if (len > 0) {
            text.assign(buf.data(), len);
        }
    }

    printf("{\"add_bos\": %s, \"n_vocab\": %d, \"prompt_ids\": ", add_bos ? "true" : "false",
           n_vocab);
    print_ids(prompt_ids);
    printf(", \"ids\": ");
    print_ids(ids);
    printf(", \"top5\": [");
    for (size_t s = 0; s < top5.size(); s++) {
        printf(s ? ", [" : "[");
        for (size_t k = 0; k < top5[s].size(); k++) {
            printf(k ? ", [%d, %.9g]" : "[%d, %.9g]", top5[s][k].first, top5[s][k].second);
        }
        putchar(']');
    }
    printf("], \"text\": %s}\n", json_str(text).c_str());

    llama_model_free(model);
    llama_backend_free();
    return 0;
}
