/* svg_plot.h - a small SVG line-chart writer: axes with round-numbered
 * ticks and a light grid, one polyline with point markers per series, and
 * a legend.  The output is a standalone, well-formed SVG 1.1 document; all
 * text is XML-escaped.  Nothing here keeps global state. */
#ifndef CM_SVG_PLOT_H
#define CM_SVG_PLOT_H

#include <stdio.h>

typedef struct {
    const char *name;     /* legend text */
    const double *x, *y;  /* n points, joined in the order given */
    int n;                /* points whose x or y is not finite are skipped */
} cm_svg_series;

typedef struct {
    const char *title, *x_label, *y_label;  /* may be NULL */
    int width, height;    /* pixels; 0: 760 x 460 */
    int y_from_zero;      /* 1: the y axis always includes 0 */
    /* optional labelled x positions (e.g. the quantization schemes): a
     * dashed guide with its label above the plot */
    const double *mark_x;
    const char *const *mark_label;
    int n_marks;
} cm_svg_chart;

/* Writes the chart to f.  Returns 0, or -1 on a write error. */
int cm_svg_line_chart(FILE *f, const cm_svg_chart *c, const cm_svg_series *s, int n_series);

#endif
