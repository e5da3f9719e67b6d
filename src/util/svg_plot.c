/* svg_plot.c - the SVG line-chart writer (see svg_plot.h). */
#include "util/svg_plot.h"

#include <math.h>
#include <string.h>

/* Plot area margins: room for tick labels, axis titles and the legend. */
#define M_LEFT 72
#define M_RIGHT 170
#define M_TOP 56
#define M_BOTTOM 58
#define N_TICKS 6

typedef struct {
    double lo, hi, step; /* axis range and tick spacing */
    int decimals;        /* enough to tell the ticks apart */
} axis;

typedef struct {
    double x0, y0, w, h; /* the plot area in pixels */
    axis ax, ay;
} frame;

static const char *const PALETTE[] = {
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f", "#bcbd22",
};
#define N_COLORS (sizeof PALETTE / sizeof PALETTE[0])

static void xml_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            /* XML 1.0 forbids most control characters even as references */
            if ((unsigned char)*s >= 0x20 || *s == '\t' || *s == '\n')
                fputc(*s, f);
        }
    }
}

/* A 1, 2 or 5 times a power of ten close to span / N_TICKS, with the range
 * widened to whole steps: ticks people read at a glance. */
static axis nice_axis(double lo, double hi)
{
    axis a;
    if (!(hi > lo)) { /* one value (or none): give it some room */
        double d = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= d, hi += d;
    }
    double raw = (hi - lo) / N_TICKS, mag = pow(10, floor(log10(raw))), r = raw / mag;
    a.step = (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    a.decimals = a.step >= 1 ? 0 : (int)ceil(-log10(a.step) - 1e-9);
    return a;
}

static void data_range(const cm_svg_series *s, int n, int y_zero, double r[4])
{
    r[0] = r[2] = INFINITY;
    r[1] = r[3] = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < s[k].n; i++) {
            double x = s[k].x[i], y = s[k].y[i];
            if (!isfinite(x) || !isfinite(y))
                continue;
            r[0] = fmin(r[0], x), r[1] = fmax(r[1], x);
            r[2] = fmin(r[2], y), r[3] = fmax(r[3], y);
        }
    if (!isfinite(r[0])) /* nothing to plot: an empty frame */
        r[0] = 0, r[1] = 1, r[2] = 0, r[3] = 1;
    if (y_zero)
        r[2] = fmin(r[2], 0), r[3] = fmax(r[3], 0);
}

static double px(const frame *fr, double x)
{
    return fr->x0 + (x - fr->ax.lo) / (fr->ax.hi - fr->ax.lo) * fr->w;
}

static double py(const frame *fr, double y)
{
    return fr->y0 + fr->h - (y - fr->ay.lo) / (fr->ay.hi - fr->ay.lo) * fr->h;
}

/* A tick value; -0 printed as 0. */
static void tick_label(FILE *f, double v, int decimals)
{
    if (fabs(v) < 1e-12)
        v = 0;
    fprintf(f, "%.*f", decimals, v);
}

static void draw_axes(FILE *f, const frame *fr, const cm_svg_chart *c)
{
    const axis *ax = &fr->ax, *ay = &fr->ay;
    fprintf(f, "<g font-size=\"12\" fill=\"#333\">\n");
    for (int i = 0; ax->lo + i * ax->step <= ax->hi + ax->step * 1e-9; i++) {
        double v = ax->lo + i * ax->step, x = px(fr, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n",
                x, fr->y0, x, fr->y0 + fr->h);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", x, fr->y0 + fr->h + 18);
        tick_label(f, v, ax->decimals);
        fprintf(f, "</text>\n");
    }
    for (int i = 0; ay->lo + i * ay->step <= ay->hi + ay->step * 1e-9; i++) {
        double v = ay->lo + i * ay->step, y = py(fr, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n",
                fr->x0, y, fr->x0 + fr->w, y, fabs(v) < 1e-12 ? "#999" : "#e4e4e4");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", fr->x0 - 8, y + 4);
        tick_label(f, v, ay->decimals);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#333\"/>\n", fr->x0, fr->y0, fr->w, fr->h);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", fr->x0 + fr->w / 2,
            fr->y0 + fr->h + 42);
    xml_text(f, c->x_label);
    fprintf(f, "</text>\n<text transform=\"translate(18 %.1f) rotate(-90)\" "
            "text-anchor=\"middle\">", fr->y0 + fr->h / 2);
    xml_text(f, c->y_label);
    fprintf(f, "</text>\n</g>\n");
}

/* Marks sorted by x; marks at the same pixel share one guide and a joined
 * label ("q4_0/q2_k"); labels alternate between two rows so close ones do
 * not overlap. */
static void draw_marks(FILE *f, const frame *fr, const cm_svg_chart *c)
{
    int idx[64], n = 0, row = 0;
    for (int i = 0; i < c->n_marks && n < 64; i++)
        if (isfinite(c->mark_x[i]) && c->mark_x[i] >= fr->ax.lo && c->mark_x[i] <= fr->ax.hi)
            idx[n++] = i;
    for (int i = 1; i < n; i++) /* insertion sort by x: a handful of marks */
        for (int k = i; k > 0 && c->mark_x[idx[k]] < c->mark_x[idx[k - 1]]; k--) {
            int t = idx[k];
            idx[k] = idx[k - 1], idx[k - 1] = t;
        }
    fprintf(f, "<g font-size=\"11\" fill=\"#555\" text-anchor=\"middle\">\n");
    for (int i = 0; i < n; row++) {
        double x = px(fr, c->mark_x[idx[i]]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#bbb\" "
                "stroke-dasharray=\"3,3\"/>\n", x, fr->y0, x, fr->y0 + fr->h);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x, fr->y0 - 4 - 12 * (row % 2));
        for (int first = 1; i < n && fabs(px(fr, c->mark_x[idx[i]]) - x) < 1.0; i++, first = 0) {
            fputs(first ? "" : "/", f);
            xml_text(f, c->mark_label[idx[i]]);
        }
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</g>\n");
}

static void draw_series(FILE *f, const frame *fr, const cm_svg_series *s, const char *color)
{
    fprintf(f, "<g><polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (int i = 0, k = 0; i < s->n; i++)
        if (isfinite(s->x[i]) && isfinite(s->y[i]))
            fprintf(f, "%s%.1f,%.1f", k++ ? " " : "", px(fr, s->x[i]), py(fr, s->y[i]));
    fprintf(f, "\"/>\n");
    for (int i = 0; i < s->n; i++) {
        if (!isfinite(s->x[i]) || !isfinite(s->y[i]))
            continue;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"><title>",
                px(fr, s->x[i]), py(fr, s->y[i]), color);
        xml_text(f, s->name);
        fprintf(f, ": %.3g, %.4g</title></circle>\n", s->x[i], s->y[i]);
    }
    fprintf(f, "</g>\n");
}

static void draw_legend(FILE *f, const frame *fr, const cm_svg_series *s, int n)
{
    double x = fr->x0 + fr->w + 18, y = fr->y0 + 8;
    fprintf(f, "<g font-size=\"13\" fill=\"#333\">\n");
    for (int k = 0; k < n; k++, y += 22) {
        const char *color = PALETTE[(size_t)k % N_COLORS];
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"2\"/>\n", x, y, x + 22, y, color);
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", x + 11, y, color);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x + 30, y + 4);
        xml_text(f, s[k].name);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</g>\n");
}

int cm_svg_line_chart(FILE *f, const cm_svg_chart *c, const cm_svg_series *s, int n_series)
{
    int W = c->width > 0 ? c->width : 760, H = c->height > 0 ? c->height : 460;
    double r[4];
    frame fr = {.x0 = M_LEFT, .y0 = M_TOP, .w = W - M_LEFT - M_RIGHT, .h = H - M_TOP - M_BOTTOM};
    if (fr.w < 40 || fr.h < 40)
        fr.w = fr.w < 40 ? 40 : fr.w, fr.h = fr.h < 40 ? 40 : fr.h;
    data_range(s, n_series, c->y_from_zero, r);
    fr.ax = nice_axis(r[0], r[1]);
    fr.ay = nice_axis(r[2], r[3]);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" "
            "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    fprintf(f, "<text x=\"%.1f\" y=\"20\" font-size=\"16\" text-anchor=\"middle\" "
            "fill=\"#111\">", fr.x0 + fr.w / 2);
    xml_text(f, c->title);
    fprintf(f, "</text>\n");
    draw_axes(f, &fr, c);
    if (c->n_marks > 0 && c->mark_x && c->mark_label)
        draw_marks(f, &fr, c);
    for (int k = 0; k < n_series; k++)
        draw_series(f, &fr, &s[k], PALETTE[(size_t)k % N_COLORS]);
    draw_legend(f, &fr, s, n_series);
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}
